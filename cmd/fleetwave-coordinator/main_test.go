package main

import (
	"flag"
	"io"
	"testing"

	"github.com/fleetwave/fleetwave/coordinator"
)

func TestDashboardOnByDefaultOnlyWithEmbeddedEtcd(t *testing.T) {
	for _, tc := range []struct {
		name      string
		args      []string
		endpoints []string
		want      string
		optional  bool
	}{
		{"embedded, flag not given", nil, nil, coordinator.DefaultHTTPListen, true},
		{"embedded, turned off", []string{"--http-listen="}, nil, "", false},
		{"embedded, another address", []string{"--http-listen=127.0.0.1:9999"}, nil, "127.0.0.1:9999", false},
		{"external etcd, flag not given", nil, []string{"etcd:2379"}, "", false},
		{"external etcd, given", []string{"--http-listen=0.0.0.0:7080"}, []string{"etcd:2379"}, "0.0.0.0:7080", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := flag.NewFlagSet("t", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			cfg := coordinator.Config{EtcdEndpoints: tc.endpoints}
			fs.StringVar(&cfg.HTTPListen, "http-listen", "", "")
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			defaultHTTPListen(fs, &cfg)
			if cfg.HTTPListen != tc.want || cfg.HTTPListenOptional != tc.optional {
				t.Errorf("http-listen %q optional %v, want %q %v", cfg.HTTPListen, cfg.HTTPListenOptional, tc.want, tc.optional)
			}
		})
	}
}
