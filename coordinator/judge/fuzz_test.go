package judge

import (
	"encoding/binary"
	"math"
	"testing"
)

// FuzzJudge builds windows of hosts from arbitrary bytes (counts of any
// size, bucket bounds of any value, hosts in either group) and judges them:
// nothing may panic, bad counts are errors, and every result's p-values
// are in [0, 1] and its values finite (the change may be +Inf). Run it with
//
//	go test ./coordinator/judge -run '^$' -fuzz FuzzJudge -fuzztime 30s
func FuzzJudge(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 200, 2, 3, 4, 5, 6, 7, 8, 9})
	f.Add([]byte("\x00\xff\xff\xff\xff\xff\xff\xff\xff\x01\x00\x00\x00\x00\x00\x00\x00\x80\x00\x00\x00\x00\x00\x00\xf0\x7f"))
	f.Fuzz(func(t *testing.T, data []byte) {
		next := func() uint64 {
			if len(data) == 0 {
				return 0
			}
			var b [8]byte
			n := copy(b[:], data)
			data = data[n:]
			return binary.LittleEndian.Uint64(b[:])
		}
		c := Config{Windows: 3, Rules: []Rule{{Name: "e", Kind: KindErrorRatio, MinCount: 1}, {Name: "l", Kind: KindLatency, Quantile: 0.9, MinCount: 1}}}
		var windows []Window
		for w := 0; w < 3 && len(data) > 0; w++ {
			var win Window
			for h := 0; h < 4 && len(data) > 0; h++ {
				hs := HostSummary{Host: string(rune('a' + h)), Canary: next()%2 == 0}
				e, n := next()%1000, next()
				hs.Counts = append(hs.Counts, Counts{Rule: "e", Requests: n, Errors: e})
				var bs []Bucket
				var cum uint64
				for range next() % 6 {
					cum += next() % 100
					bs = append(bs, Bucket{UpperBound: math.Float64frombits(next()), Count: cum})
				}
				if len(bs) > 0 {
					bs[len(bs)-1].UpperBound = math.Inf(1)
				}
				hs.Counts = append(hs.Counts, Counts{Rule: "l", Buckets: bs})
				win.Hosts = append(win.Hosts, hs)
			}
			windows = append(windows, win)
		}
		j, err := Judge(c, windows)
		if err != nil {
			return
		}
		for _, r := range j.Results {
			for _, v := range []float64{r.P, r.AdjustedP} {
				if !(v >= 0 && v <= 1) {
					t.Fatalf("p-value %g out of [0, 1]: %+v", v, r)
				}
			}
			if math.IsNaN(r.CanaryValue) || math.IsInf(r.CanaryValue, 0) || math.IsNaN(r.BaselineValue) || math.IsInf(r.BaselineValue, 0) || math.IsNaN(r.Change) {
				t.Fatalf("value not finite: %+v", r)
			}
		}
	})
}
