package images

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/gzip"
)

// BenchmarkPullUnpack100MB pulls a ~100 MB image of incompressible data in
// four gzip layers from a loopback registry into an empty store and unpacks
// it. Bytes are the uncompressed layer contents.
func BenchmarkPullUnpack100MB(b *testing.B) {
	const (
		layers        = 4
		filesPerLayer = 5
		fileSize      = 5 << 20 // 4 layers x 5 files x 5 MiB = 100 MiB
	)
	reg := newTestRegistry(b)
	rng := rand.NewChaCha8([32]byte{1})
	var ls []v1.Layer
	for i := range layers {
		var entries []entry
		entries = append(entries, dir(fmt.Sprintf("data%d/", i), 0o755))
		for j := range filesPerLayer {
			body := make([]byte, fileSize)
			rng.Read(body)
			entries = append(entries, file(fmt.Sprintf("data%d/blob%d.bin", i, j), 0o644, string(body)))
		}
		var gz bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&gz, gzip.BestSpeed)
		zw.Write(tarBytes(b, entries...))
		zw.Close()
		ls = append(ls, layerOf(b, gz.Bytes()))
	}
	ref := reg.ref("bench/big:v1")
	reg.push(ref, imageOf(b, v1.Config{}, ls...))

	base := b.TempDir()
	b.SetBytes(layers * filesPerLayer * fileSize)
	b.ResetTimer()
	for i := range b.N {
		dir := filepath.Join(base, fmt.Sprint(i))
		s := newTestStore(b, dir)
		if _, err := s.Pull(testContext(b), ref, nil); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		s.Close()
		os.RemoveAll(dir)
		b.StartTimer()
	}
}
