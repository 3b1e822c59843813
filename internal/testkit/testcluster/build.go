package testcluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// etcdNodePkg is the helper binary's import path.
const etcdNodePkg = "github.com/fleetwave/fleetwave/internal/testkit/testcluster/etcdnode"

var built struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// BuildEtcdNode compiles the etcdnode helper binary once per test process
// (later calls return the same path) and returns its path. The binary lives
// in a temporary directory; call RemoveBuilds from TestMain after m.Run to
// delete it.
func BuildEtcdNode(t testing.TB) string {
	t.Helper()
	built.once.Do(func() {
		built.path, built.dir, built.err = buildEtcdNode()
	})
	if built.err != nil {
		t.Fatalf("build etcdnode: %v", built.err)
	}
	return built.path
}

// RemoveBuilds deletes the binaries BuildEtcdNode made in this process.
func RemoveBuilds() {
	if built.dir != "" {
		_ = os.RemoveAll(built.dir)
	}
}

func buildEtcdNode() (path, dir string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	root, err := moduleRoot(ctx)
	if err != nil {
		return "", "", err
	}
	dir, err = os.MkdirTemp("", "fleetwave-etcdnode-")
	if err != nil {
		return "", "", fmt.Errorf("temp dir for etcdnode: %w", err)
	}
	path = filepath.Join(dir, "etcdnode")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", path, etcdNodePkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		_ = os.RemoveAll(dir)
		return "", "", fmt.Errorf("go build %s: %w\n%s", etcdNodePkg, err, out)
	}
	return path, dir, nil
}

// moduleRoot asks the go command for the directory of the main module's
// go.mod, from the working directory (a package directory under go test).
func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("go env GOMOD: not inside a module (got %q)", gomod)
	}
	return filepath.Dir(gomod), nil
}
