package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// With DEMOAPP_RUN_MAIN=1 the test binary is the command itself.
func TestMain(m *testing.M) {
	if os.Getenv("DEMOAPP_RUN_MAIN") == "1" {
		os.Exit(run())
	}
	os.Exit(m.Run())
}

func command(t *testing.T, files map[string]string) *exec.Cmd {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "--listen", "127.0.0.1:0", "--dir", dir)
	// GORACE: a -race child would otherwise sleep 1s on exit.
	cmd.Env = append(os.Environ(), "DEMOAPP_RUN_MAIN=1", "GORACE=atexit_sleep_ms=0")
	return cmd
}

func TestSIGTERMShutsDownGracefully(t *testing.T) {
	cmd := command(t, map[string]string{"VERSION": "m1"})
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })

	lines := make(chan map[string]any, 16)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var rec map[string]any
			if json.Unmarshal(sc.Bytes(), &rec) == nil {
				lines <- rec
			}
		}
		close(lines)
	}()
	next := func(msg string) map[string]any {
		t.Helper()
		timeout := time.After(10 * time.Second)
		for {
			select {
			case rec, ok := <-lines:
				if !ok {
					t.Fatalf("output ended before %q", msg)
				}
				if rec["message"] == msg {
					return rec
				}
			case <-timeout:
				t.Fatalf("no %q log line", msg)
			}
		}
	}
	addr, _ := next("listening")["addr"].(string)
	resp, err := http.Get("http://" + addr + "/version")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "m1" {
		t.Fatalf("/version = %q, want m1", body)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	next("stopped")
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM = %v, want 0", err)
	}
}

func TestCrashExitsOne(t *testing.T) {
	cmd := command(t, map[string]string{"VERSION": "m1", "CRASH": ""})
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("exit = %v, want status 1", err)
	}
	if !strings.Contains(stderr.String(), "CRASH") {
		t.Fatalf("stderr %q does not say why", stderr.String())
	}
}
