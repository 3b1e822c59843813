package sockets

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The test binary doubles as the service process: with SOCKETS_HELPER set
// it runs helperMain instead of the tests.
func TestMain(m *testing.M) {
	if mode := os.Getenv("SOCKETS_HELPER"); mode != "" {
		os.Exit(helperMain(mode))
	}
	os.Exit(m.Run())
}

// report is what the "env" helper prints about itself.
type report struct {
	PID        int               `json:"pid"`
	Args       []string          `json:"args"`
	Env        map[string]string `json:"env"`
	SocketFDs  []int             `json:"socket_fds"` // every open fd that is a socket
	Inodes     map[int]uint64    `json:"inodes"`
	CloseOnExc map[int]bool      `json:"cloexec"`
	Listening  map[int]bool      `json:"listening"`
}

func helperMain(mode string) int {
	switch mode {
	case "env": // reports its fds and environment as JSON, then exits
		r := report{PID: os.Getpid(), Args: os.Args, Env: map[string]string{},
			Inodes: map[int]uint64{}, CloseOnExc: map[int]bool{}, Listening: map[int]bool{}}
		for _, k := range []string{EnvListenPID, EnvListenFDs, EnvListenFDNames, EnvNotifySocket, "KEEP"} {
			if v, ok := os.LookupEnv(k); ok {
				r.Env[k] = v
			}
		}
		entries, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		for _, e := range entries {
			fd, _ := strconv.Atoi(e.Name())
			ino, err := inode(fd)
			if err != nil {
				continue // not a socket (or the directory's own fd, gone)
			}
			r.SocketFDs = append(r.SocketFDs, fd)
			r.Inodes[fd] = ino
			flags, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
			r.CloseOnExc[fd] = flags&unix.FD_CLOEXEC != 0
			v, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
			r.Listening[fd] = v == 1
		}
		if err := json.NewEncoder(os.Stdout).Encode(r); err != nil {
			return 2
		}
		return 0
	case "serve": // HTTP on fd 3 answering with its pid; READY=1; graceful stop on SIGTERM
		return helperServe()
	case "hold": // holds its fds until killed
		fmt.Println("holding")
		select {}
	case "notify": // sends each line of stdin as a message; exits at EOF
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			msg := strings.ReplaceAll(sc.Text(), `\n`, "\n")
			if err := sdNotify(os.Getenv(EnvNotifySocket), msg); err != nil {
				fmt.Println("error:", err)
				continue
			}
			fmt.Println("sent")
		}
		return 0
	case "notify-child": // runs a "notify" child with the same stdin and stdout, then waits
		exe, _ := os.Executable()
		c := exec.Command(exe)
		c.Env = append(os.Environ(), "SOCKETS_HELPER=notify")
		c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
		fmt.Println("starting child")
		if err := c.Run(); err != nil {
			fmt.Println("error:", err)
			return 2
		}
		return 0
	default:
		fmt.Fprintf(os.Stderr, "unknown helper mode %q\n", mode)
		return 2
	}
}

func helperServe() int {
	if os.Getenv(EnvListenPID) != strconv.Itoa(os.Getpid()) || os.Getenv(EnvListenFDs) != "1" {
		fmt.Fprintf(os.Stderr, "not socket-activated: LISTEN_PID=%q LISTEN_FDS=%q pid=%d\n",
			os.Getenv(EnvListenPID), os.Getenv(EnvListenFDs), os.Getpid())
		return 2
	}
	f := os.NewFile(3, "http")
	l, err := net.FileListener(f)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	_ = f.Close()
	pid := strconv.Itoa(os.Getpid())
	// conns counts the connections accepted and not yet closed. Only
	// Serve's goroutine adds (StateNew), so once Serve has returned no Add
	// races the Wait below.
	var conns sync.WaitGroup
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			_, _ = io.WriteString(w, pid)
		}),
		ReadHeaderTimeout: time.Minute,
		ConnState: func(_ net.Conn, st http.ConnState) {
			switch st {
			case http.StateNew:
				conns.Add(1)
			case http.StateClosed, http.StateHijacked:
				conns.Done()
			}
		},
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	if err := sdNotify(os.Getenv(EnvNotifySocket), "READY=1"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	select {
	case <-term:
	case err := <-served:
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	// Graceful stop for a handover. Not Shutdown first: Shutdown drops a
	// connection it accepted whose request it reads after it began (it
	// closes it without an answer). Instead stop accepting (the socket's
	// queue is the next process's from now on), end keep-alive, and let
	// every accepted connection finish its request.
	_ = l.Close()
	<-served
	srv.SetKeepAlivesEnabled(false)
	conns.Wait()
	if err := srv.Shutdown(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	return 0
}

// sdNotify sends one message to a notify socket, as sd_notify(3) does.
func sdNotify(path, msg string) error {
	if path == "" {
		return errors.New("no NOTIFY_SOCKET")
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(msg))
	return err
}

// helperCmd is a command running the test binary as helper mode.
func helperCmd(t *testing.T, mode string, args ...string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, args...)
	// GORACE: a -race child must not sleep a second on exit.
	cmd.Env = []string{"SOCKETS_HELPER=" + mode, "GORACE=atexit_sleep_ms=0", "PATH=" + os.Getenv("PATH")}
	cmd.Stderr = &testWriter{t: t, prefix: mode + ": "}
	// Its own process group, killed whole at the end of the test; pipes a
	// leftover grandchild holds do not keep Wait waiting.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// testWriter logs a child's stderr through t.
type testWriter struct {
	t      *testing.T
	prefix string
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.t.Log(w.prefix + strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// proc is a started helper with its exit awaited in the background.
type proc struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed when Wait returned
	err    error         // Wait's result, after exited
}

// start starts cmd after Prepare (socks, n may be empty/nil), watches its
// pid on n, and kills it at the end of the test if it is still running.
func start(t *testing.T, cmd *exec.Cmd, socks []*Socket, n *Notify) *proc {
	t.Helper()
	release, err := Prepare(cmd, socks, n)
	if err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	p := startPlain(t, cmd)
	release()
	if n != nil {
		if err := n.Watch(cmd.Process.Pid); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// startPlain starts cmd as it is.
func startPlain(t *testing.T, cmd *exec.Cmd) *proc {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start: %v", err)
	}
	p := &proc{cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-p.exited
	})
	return p
}

// failAfter is how long a test waits for something that should happen
// before it fails: a failure deadline, not an expected time.
const failAfter = 2 * time.Minute

// waitReady waits for READY=1 on n, failing if p exits first.
func waitReady(t *testing.T, n *Notify, p *proc) {
	t.Helper()
	deadline := time.NewTimer(failAfter)
	defer deadline.Stop()
	select {
	case <-n.Ready():
	case <-p.exited:
		t.Fatalf("pid %d exited before READY=1: %v", p.cmd.Process.Pid, p.err)
	case <-deadline.C:
		t.Fatalf("no READY=1 from pid %d within %v", p.cmd.Process.Pid, failAfter)
	}
}

// waitExit waits for p to exit and returns Wait's error.
func waitExit(t *testing.T, p *proc) error {
	t.Helper()
	deadline := time.NewTimer(failAfter)
	defer deadline.Stop()
	select {
	case <-p.exited:
		return p.err
	case <-deadline.C:
		t.Fatalf("pid %d did not exit within %v", p.cmd.Process.Pid, failAfter)
		return nil
	}
}

// readLine reads one line from r, failing the test after failAfter.
func readLine(t *testing.T, r *bufio.Reader) string {
	t.Helper()
	type res struct {
		s   string
		err error
	}
	ch := make(chan res, 1)
	go func() {
		s, err := r.ReadString('\n')
		ch <- res{strings.TrimSuffix(s, "\n"), err}
	}()
	deadline := time.NewTimer(failAfter)
	defer deadline.Stop()
	select {
	case x := <-ch:
		if x.err != nil {
			t.Fatalf("read a line: %v", x.err)
		}
		return x.s
	case <-deadline.C:
		t.Fatalf("no line within %v", failAfter)
		return ""
	}
}
