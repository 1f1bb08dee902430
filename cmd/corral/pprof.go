package main

import (
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
)

// servePprof serves Go's profiles on CORRAL_PPROF (e.g. 127.0.0.1:6060)
// when it is set: for measuring a running daemon (`go tool pprof
// http://ADDR/debug/pprof/profile?seconds=10`). Off by default; bind it
// to loopback, the profiles are unauthenticated.
func servePprof(logger *slog.Logger) {
	addr := os.Getenv("CORRAL_PPROF")
	if addr == "" {
		return
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		logger.Warn("CORRAL_PPROF: cannot listen", "addr", addr, "error", err)
		return
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	logger.Info("serving Go profiles", "addr", ln.Addr().String())
	go func() { _ = http.Serve(ln, mux) }()
}
