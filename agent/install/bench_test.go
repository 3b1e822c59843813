package install

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/rs/zerolog"
)

// BenchmarkInstall measures fetch (size cap + running sha256 into a temp
// file), verify, stage (unpack through os.Root, fsync) and switch of an
// 8 MiB release made of 32 files, on the real file system.
func BenchmarkInstall(b *testing.B) {
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	rnd := rand.New(rand.NewPCG(1, 2))
	total := 0
	for i := range 32 {
		data := make([]byte, 256<<10)
		for j := range data {
			data[j] = byte(rnd.IntN(16)) // compressible, like a binary
		}
		total += len(data)
		if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("bin/f%02d", i), Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			b.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			b.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		b.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		b.Fatal(err)
	}
	art := buf.Bytes()
	sum := sha256.Sum256(art)
	want := Artifact{SHA256: hex.EncodeToString(sum[:]), Size: int64(len(art))}
	in, err := New(b.TempDir(), DefaultLimits(), zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(total))
	for i := 0; b.Loop(); i++ {
		f, err := in.Fetch(context.Background(), bytes.NewReader(art), want)
		if err != nil {
			b.Fatal(err)
		}
		v, err := in.Verify(f, want)
		if err != nil {
			b.Fatal(err)
		}
		ver := fmt.Sprintf("v%d", i)
		if _, err := in.Stage(context.Background(), "web", ver, v); err != nil {
			b.Fatal(err)
		}
		if err := in.Switch("web", ver); err != nil {
			b.Fatal(err)
		}
		if err := in.Prune("web", ver); err != nil {
			b.Fatal(err)
		}
	}
}
