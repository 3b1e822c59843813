package analysis

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// MaxScrapeBytes caps one metrics exposition (after decompression).
const MaxScrapeBytes = 4 << 20

// ErrTooLarge is returned (wrapped) for an exposition over MaxScrapeBytes.
var ErrTooLarge = errors.New("metrics exposition too large")

// Sample is one scrape: every metric family of the exposition, by name, and
// when it was taken.
type Sample struct {
	At       time.Time
	Families map[string]*dto.MetricFamily
}

// Parse reads a Prometheus text exposition (format 0.0.4) of at most
// MaxScrapeBytes.
func Parse(r io.Reader, at time.Time) (Sample, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxScrapeBytes+1))
	if err != nil {
		return Sample{}, fmt.Errorf("read metrics: %w", err)
	}
	if len(b) > MaxScrapeBytes {
		return Sample{}, fmt.Errorf("%w: more than %d bytes", ErrTooLarge, MaxScrapeBytes)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(b))
	if err != nil {
		return Sample{}, fmt.Errorf("parse metrics: %w", err)
	}
	return Sample{At: at, Families: fams}, nil
}
