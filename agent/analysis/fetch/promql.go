package fetch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/fleetwave/fleetwave/agent/analysis"
)

// MaxQueryBytes caps a Prometheus API answer.
const MaxQueryBytes = 1 << 20

// QueryPromQL runs an instant query against the Prometheus HTTP API at
// baseURL (GET {baseURL}/api/v1/query?query=...). A scalar result or a
// vector of exactly one sample gives its value with ok true (the value may
// be NaN or ±Inf as Prometheus returns them; analysis.Evaluate treats those as
// inconclusive). An empty vector gives ok false. A vector of more than one
// sample, any other result type, an API error, a status other than 200, a
// body over MaxQueryBytes (analysis.ErrTooLarge) or malformed JSON is an
// error naming the query and the URL. The caller bounds it with ctx. A nil
// client means http.DefaultClient.
func QueryPromQL(ctx context.Context, client *http.Client, baseURL, query string) (value float64, ok bool, err error) {
	name := redactURL(baseURL)
	fail := func(err error) (float64, bool, error) {
		return 0, false, fmt.Errorf("promql query %q at %s: %w", query, name, err)
	}
	u, err := url.Parse(baseURL)
	if err != nil {
		return fail(unwrapURLError(err))
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fail(errors.New("not an http:// or https:// URL"))
	}
	u.Path = strings.TrimRight(u.Path, "/") + "/api/v1/query"
	u.RawPath = ""
	u.RawQuery = url.Values{"query": {query}}.Encode()
	u.Fragment = ""

	body, err := get(ctx, client, u.String(), "application/json")
	var se *statusError
	if errors.As(err, &se) {
		// Prometheus explains a bad query in a JSON body (400, 422, 503).
		var r apiResponse
		if json.Unmarshal([]byte(se.body), &r) == nil && r.Error != "" {
			return fail(fmt.Errorf("status %d: %s: %s", se.code, r.ErrorType, truncate(r.Error, 300)))
		}
		return fail(err)
	}
	if err != nil {
		return fail(err)
	}
	defer closeBody(body)
	b, err := io.ReadAll(io.LimitReader(body, MaxQueryBytes+1))
	if err != nil {
		return fail(fmt.Errorf("read answer: %w", err))
	}
	if len(b) > MaxQueryBytes {
		return fail(fmt.Errorf("%w: answer of more than %d bytes", analysis.ErrTooLarge, MaxQueryBytes))
	}
	value, ok, err = decodeQueryAnswer(b)
	if err != nil {
		return fail(err)
	}
	return value, ok, nil
}

// apiResponse is the envelope of every Prometheus HTTP API answer.
type apiResponse struct {
	Status string `json:"status"`
	Data   struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	} `json:"data"`
	ErrorType string `json:"errorType"`
	Error     string `json:"error"`
}

func decodeQueryAnswer(b []byte) (float64, bool, error) {
	var r apiResponse
	if err := json.Unmarshal(b, &r); err != nil {
		return 0, false, fmt.Errorf("decode answer: %w", err)
	}
	if r.Status != "success" {
		if r.Error != "" {
			return 0, false, fmt.Errorf("status %q: %s: %s", truncate(r.Status, 40), r.ErrorType, truncate(r.Error, 300))
		}
		return 0, false, fmt.Errorf("status %q, want \"success\"", truncate(r.Status, 40))
	}
	switch r.Data.ResultType {
	case "scalar":
		v, err := decodeSamplePair(r.Data.Result)
		if err != nil {
			return 0, false, fmt.Errorf("scalar result: %w", err)
		}
		return v, true, nil
	case "vector":
		var vec []struct {
			Value json.RawMessage `json:"value"`
		}
		if err := json.Unmarshal(r.Data.Result, &vec); err != nil {
			return 0, false, fmt.Errorf("decode vector result: %w", err)
		}
		switch len(vec) {
		case 0:
			return 0, false, nil
		case 1:
			if len(vec[0].Value) == 0 {
				return 0, false, errors.New("the vector's sample has no value (a native histogram?)")
			}
			v, err := decodeSamplePair(vec[0].Value)
			if err != nil {
				return 0, false, fmt.Errorf("vector result: %w", err)
			}
			return v, true, nil
		default:
			return 0, false, fmt.Errorf("the query returned %d samples, want 1 (aggregate it, e.g. with sum or max)", len(vec))
		}
	default:
		return 0, false, fmt.Errorf("result type %q, want scalar or vector", truncate(r.Data.ResultType, 40))
	}
}

// decodeSamplePair decodes [<unix time>, "<value>"].
func decodeSamplePair(raw json.RawMessage) (float64, error) {
	var pair []json.RawMessage
	if err := json.Unmarshal(raw, &pair); err != nil {
		return 0, fmt.Errorf("decode [time, value]: %w", err)
	}
	if len(pair) != 2 {
		return 0, fmt.Errorf("want [time, value], got %d elements", len(pair))
	}
	var s string
	if err := json.Unmarshal(pair[1], &s); err != nil {
		return 0, fmt.Errorf("value %s is not a string: %w", truncate(string(pair[1]), 40), err)
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, fmt.Errorf("value %q is not a number", truncate(s, 40))
	}
	return v, nil
}
