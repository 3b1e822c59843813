package sim

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fleetwave/fleetwave/internal/spec"
)

// The control protocol lets another process drive a Fleet running in
// fleetwave-sim --control: the spread harness runs one simulator process
// per coordinator (a process's open-file limit bounds its hosts) and does
// with each what it does with an in-process Fleet.
//
// One request a line on the simulator's stdin, one reply a line on its
// stdout, matched by the request's id (replies come in the order their
// requests end, not the order they were sent):
//
//	<id> wait-connected <n> <timeout>        Fleet.WaitConnected(n), bounded by timeout
//	<id> wait-all <service> <version> <timeout>  Fleet.WaitAll(service, version), bounded by timeout
//	<id> reset-latency                       Fleet.ResetLatency
//	<id> stats                               Fleet.Stats
//
//	<id> ok [<JSON>]    (stats: the Stats as JSON)
//	<id> error <message>
//
// id is a decimal in 1..2^63-1, timeout a Go duration in (0, MaxControlWait].
// A line that has no valid id (or is too long) is answered with id 0. The
// session ends when stdin ends; requests in flight are cancelled.
const (
	// MaxControlLine bounds a request line, newline included.
	MaxControlLine = 1024
	// MaxControlReply bounds a reply line, newline included.
	MaxControlReply = 64 << 10
	// MaxControlInFlight bounds the requests served at once; one more is
	// answered with an error.
	MaxControlInFlight = 64
	// MaxControlWait bounds the timeout of a wait.
	MaxControlWait = 24 * time.Hour
)

// The control verbs.
const (
	verbWaitConnected = "wait-connected"
	verbWaitAll       = "wait-all"
	verbResetLatency  = "reset-latency"
	verbStats         = "stats"
)

// ErrControlClosed is returned by a RemoteFleet whose simulator closed its
// side (exited).
var ErrControlClosed = errors.New("simulator control channel closed")

// controlRequest is one parsed request line.
type controlRequest struct {
	id       uint64
	verb     string
	n        int    // wait-connected
	service  string // wait-all
	version  string // wait-all
	deadline time.Duration
}

// parseControlRequest parses a request line (without its newline) for a
// fleet of hosts hosts. The error names the field and the value; id is
// the line's id when it has a valid one (0 otherwise).
func parseControlRequest(line string, hosts int) (req controlRequest, err error) {
	f := strings.Fields(line)
	if len(f) == 0 {
		return req, errors.New("empty line: want <id> <verb> [arguments]")
	}
	id, perr := strconv.ParseUint(f[0], 10, 63)
	if perr != nil || id == 0 {
		return req, fmt.Errorf("id: %q, want a decimal in 1..%d", trunc(f[0]), uint64(1<<63-1))
	}
	req.id = id
	if len(f) < 2 {
		return req, errors.New("verb: missing, want wait-connected, wait-all, reset-latency or stats")
	}
	req.verb = f[1]
	args := f[2:]
	want := func(usage string, n int) error {
		if len(args) != n {
			return fmt.Errorf("%s: %d argument(s), want %d: %s", req.verb, len(args), n, usage)
		}
		return nil
	}
	switch req.verb {
	case verbWaitConnected:
		if err := want("<n> <timeout>", 2); err != nil {
			return req, err
		}
		n, perr := strconv.Atoi(args[0])
		if perr != nil || n < 0 || n > hosts {
			return req, fmt.Errorf("%s: n: %q, want 0..%d (the fleet's hosts)", req.verb, trunc(args[0]), hosts)
		}
		req.n = n
		req.deadline, err = parseControlTimeout(req.verb, args[1])
	case verbWaitAll:
		if err := want("<service> <version> <timeout>", 3); err != nil {
			return req, err
		}
		if err := spec.CheckName(req.verb+": service", args[0]); err != nil {
			return req, err
		}
		if err := spec.CheckVersion(req.verb+": version", args[1]); err != nil {
			return req, err
		}
		req.service, req.version = args[0], args[1]
		req.deadline, err = parseControlTimeout(req.verb, args[2])
	case verbResetLatency, verbStats:
		err = want("no arguments", 0)
	default:
		err = fmt.Errorf("verb: %q, want wait-connected, wait-all, reset-latency or stats", trunc(req.verb))
	}
	return req, err
}

func parseControlTimeout(verb, s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 || d > MaxControlWait {
		return 0, fmt.Errorf("%s: timeout: %q, want a duration in (0, %s]", verb, trunc(s), MaxControlWait)
	}
	return d, nil
}

// trunc shortens a value quoted in an error (a line is at most
// MaxControlLine bytes, an error should be shorter).
func trunc(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// ServeControl serves the control protocol for f: requests from r,
// replies to w. It returns nil when r ends, or when ctx ends (it then
// closes r if r is an io.Closer, to end the read), after the requests in
// flight are cancelled and answered.
func ServeControl(ctx context.Context, f *Fleet, r io.Reader, w io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	var (
		wmu      sync.Mutex
		werr     error
		wg       sync.WaitGroup
		inFlight = make(chan struct{}, MaxControlInFlight)
	)
	reply := func(id uint64, status, body string) {
		line := strconv.FormatUint(id, 10) + " " + status
		if body != "" {
			line += " " + strings.ReplaceAll(body, "\n", " ")
		}
		wmu.Lock()
		defer wmu.Unlock()
		if werr == nil {
			_, werr = io.WriteString(w, line+"\n")
		}
	}
	defer func() { cancel(); wg.Wait() }() // the waits in flight end, answered
	br := bufio.NewReaderSize(r, MaxControlLine)
	go func() {
		<-ctx.Done()
		// Unblock a read that ctx cannot: a closer on the other side is
		// what normally ends the session.
		if c, ok := r.(io.Closer); ok {
			_ = c.Close()
		}
	}()
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			for errors.Is(err, bufio.ErrBufferFull) { // discard the rest of the line
				_, err = br.ReadSlice('\n')
			}
			reply(0, "error", fmt.Sprintf("line of more than %d bytes refused", MaxControlLine))
			if err != nil {
				return nil
			}
			continue
		}
		if err != nil {
			// io.EOF (a last line without its newline is not a request) or
			// a closed pipe: the session is over.
			return nil
		}
		req, perr := parseControlRequest(string(bytes.TrimRight(line, "\r\n")), f.Len())
		if perr != nil {
			reply(req.id, "error", perr.Error())
			continue
		}
		select {
		case inFlight <- struct{}{}:
		default:
			reply(req.id, "error", fmt.Sprintf("%s: %d requests in flight, at most %d", req.verb, MaxControlInFlight, MaxControlInFlight))
			continue
		}
		wg.Go(func() {
			body, err := serveControlRequest(ctx, f, req)
			<-inFlight // free before the reply: a client that saw it may send again
			if err != nil {
				reply(req.id, "error", err.Error())
				return
			}
			reply(req.id, "ok", body)
		})
	}
}

func serveControlRequest(ctx context.Context, f *Fleet, req controlRequest) (string, error) {
	switch req.verb {
	case verbWaitConnected:
		ctx, cancel := context.WithTimeout(ctx, req.deadline)
		defer cancel()
		return "", f.WaitConnected(ctx, req.n)
	case verbWaitAll:
		ctx, cancel := context.WithTimeout(ctx, req.deadline)
		defer cancel()
		return "", f.WaitAll(ctx, req.service, req.version)
	case verbResetLatency:
		f.ResetLatency()
		return "", nil
	case verbStats:
		b, err := json.Marshal(f.Stats())
		if err != nil {
			return "", fmt.Errorf("stats: %w", err)
		}
		return string(b), nil
	}
	return "", fmt.Errorf("verb: %q not served", req.verb) // parseControlRequest admits no other
}

// RemoteFleet drives a Fleet in another process (fleetwave-sim --control)
// through the control protocol. Its methods are safe for concurrent use.
type RemoteFleet struct {
	w io.Writer

	mu      sync.Mutex // w, next, pending, err
	next    uint64
	pending map[uint64]chan controlReply
	err     error // set when the reply stream ended or broke
	done    chan struct{}
}

type controlReply struct {
	ok   bool
	body string
}

// NewRemoteFleet speaks the control protocol: requests to w (the
// simulator's stdin), replies from r (its stdout). It reads r until it
// ends; calls then fail with ErrControlClosed.
func NewRemoteFleet(w io.Writer, r io.Reader) *RemoteFleet {
	rf := &RemoteFleet{w: w, pending: map[uint64]chan controlReply{}, done: make(chan struct{})}
	go rf.read(r)
	return rf
}

func (rf *RemoteFleet) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), MaxControlReply)
	var err error
	for sc.Scan() {
		id, rep, perr := parseControlReply(sc.Text())
		if perr == nil && id == 0 {
			perr = fmt.Errorf("simulator refused a request line: %s", rep.body)
		}
		if perr != nil {
			err = perr
			break
		}
		rf.mu.Lock()
		ch := rf.pending[id]
		delete(rf.pending, id)
		rf.mu.Unlock()
		if ch != nil { // nil: its caller gave up
			ch <- rep
		}
	}
	if err == nil {
		err = sc.Err()
	}
	if err != nil {
		err = fmt.Errorf("%w: %w", ErrControlClosed, err)
	} else {
		err = ErrControlClosed
	}
	rf.mu.Lock()
	rf.err = err
	rf.mu.Unlock()
	close(rf.done)
	// The reader is gone: a simulator that still writes would block.
	_, _ = io.Copy(io.Discard, r)
}

// parseControlReply parses "<id> ok [body]" or "<id> error <message>".
func parseControlReply(line string) (uint64, controlReply, error) {
	idStr, rest, _ := strings.Cut(line, " ")
	id, err := strconv.ParseUint(idStr, 10, 63)
	if err != nil {
		return 0, controlReply{}, fmt.Errorf("reply id: %q is not a decimal id", trunc(idStr))
	}
	status, body, _ := strings.Cut(rest, " ")
	switch status {
	case "ok":
		return id, controlReply{ok: true, body: body}, nil
	case "error":
		return id, controlReply{body: body}, nil
	}
	return 0, controlReply{}, fmt.Errorf("reply %d: status %q, want ok or error", id, trunc(status))
}

// call sends one request and waits for its reply. The request's timeout
// (for the waits) is ctx's remaining time, at most MaxControlWait.
func (rf *RemoteFleet) call(ctx context.Context, verb string, args ...string) (string, error) {
	ch := make(chan controlReply, 1)
	rf.mu.Lock()
	if rf.err != nil {
		err := rf.err
		rf.mu.Unlock()
		return "", fmt.Errorf("%s: %w", verb, err)
	}
	rf.next++
	id := rf.next
	rf.pending[id] = ch
	line := strings.Join(append([]string{strconv.FormatUint(id, 10), verb}, args...), " ") + "\n"
	var err error
	if len(line) > MaxControlLine {
		err = fmt.Errorf("request of %d bytes, over %d", len(line), MaxControlLine)
	} else {
		_, err = io.WriteString(rf.w, line)
	}
	if err != nil {
		delete(rf.pending, id)
		rf.mu.Unlock()
		return "", fmt.Errorf("%s: %w", verb, err)
	}
	rf.mu.Unlock()
	select {
	case rep := <-ch:
		if !rep.ok {
			return "", fmt.Errorf("simulator: %s", rep.body)
		}
		return rep.body, nil
	case <-rf.done:
		rf.mu.Lock()
		err := rf.err
		rf.mu.Unlock()
		select {
		case rep := <-ch: // answered before the stream ended
			if !rep.ok {
				return "", fmt.Errorf("simulator: %s", rep.body)
			}
			return rep.body, nil
		default:
		}
		return "", fmt.Errorf("%s: %w", verb, err)
	case <-ctx.Done():
		rf.mu.Lock()
		delete(rf.pending, id)
		rf.mu.Unlock()
		return "", fmt.Errorf("%s: %w", verb, ctx.Err())
	}
}

// waitBound is the wait's bound sent to the simulator: ctx's remaining time,
// at most MaxControlWait.
func waitBound(ctx context.Context) string {
	d := MaxControlWait
	if dl, ok := ctx.Deadline(); ok {
		d = min(d, max(time.Until(dl), time.Millisecond))
	}
	return d.String()
}

// WaitConnected is Fleet.WaitConnected in the simulator.
func (rf *RemoteFleet) WaitConnected(ctx context.Context, n int) error {
	_, err := rf.call(ctx, verbWaitConnected, strconv.Itoa(n), waitBound(ctx))
	return err
}

// WaitAll is Fleet.WaitAll in the simulator.
func (rf *RemoteFleet) WaitAll(ctx context.Context, service, version string) error {
	_, err := rf.call(ctx, verbWaitAll, service, version, waitBound(ctx))
	return err
}

// ResetLatency is Fleet.ResetLatency in the simulator.
func (rf *RemoteFleet) ResetLatency(ctx context.Context) error {
	_, err := rf.call(ctx, verbResetLatency)
	return err
}

// Stats is Fleet.Stats in the simulator.
func (rf *RemoteFleet) Stats(ctx context.Context) (Stats, error) {
	body, err := rf.call(ctx, verbStats)
	if err != nil {
		return Stats{}, err
	}
	var s Stats
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		return Stats{}, fmt.Errorf("stats: %w", err)
	}
	return s, nil
}
