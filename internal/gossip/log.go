package gossip

import (
	"bytes"
	"strings"

	"github.com/rs/zerolog"
)

// logWriter receives memberlist's log lines ("[LEVEL] memberlist: msg") and
// writes them to zerolog at the matching level. It also tells the Gossip when
// this node's own probe suspects a member, which memberlist reports nowhere
// else. memberlist may write while holding its node lock: onSuspect must not
// call back into memberlist.
type logWriter struct {
	log       zerolog.Logger
	onSuspect func(name string)
}

const (
	suspectPrefix = "Suspect "
	suspectSuffix = " has failed, no acks received"
)

func (w *logWriter) Write(p []byte) (int, error) {
	for _, line := range bytes.Split(p, []byte{'\n'}) {
		if len(bytes.TrimSpace(line)) > 0 {
			w.line(string(line))
		}
	}
	return len(p), nil
}

func (w *logWriter) line(s string) {
	level, msg := parseLine(s)
	if name, ok := strings.CutPrefix(msg, suspectPrefix); ok {
		if name, ok = strings.CutSuffix(name, suspectSuffix); ok && w.onSuspect != nil {
			w.onSuspect(name)
		}
	}
	w.log.WithLevel(level).Str("source", "memberlist").Msg(msg)
}

// parseLine splits a memberlist log line into its level and message. Lines
// without a known "[LEVEL]" prefix are logged at info; "Err:" lines at error.
func parseLine(s string) (zerolog.Level, string) {
	s = strings.TrimSpace(s)
	level := zerolog.InfoLevel
	if rest, ok := strings.CutPrefix(s, "Err:"); ok {
		return zerolog.ErrorLevel, strings.TrimSpace(rest)
	}
	if strings.HasPrefix(s, "[") {
		if end := strings.IndexByte(s, ']'); end > 0 {
			switch strings.ToUpper(s[1:end]) {
			case "TRACE", "DEBUG":
				level = zerolog.DebugLevel
			case "INFO":
				level = zerolog.InfoLevel
			case "WARN", "WARNING":
				level = zerolog.WarnLevel
			case "ERR", "ERROR":
				level = zerolog.ErrorLevel
			}
			s = strings.TrimSpace(s[end+1:])
		}
	}
	s = strings.TrimPrefix(s, "memberlist: ")
	return level, s
}
