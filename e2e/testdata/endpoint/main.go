// Command endpoint is the replica of the endpoint e2e test: a tiny HTTP
// server that answers with its hostname, session and image version, and
// has a health check.
package main

import (
	"fmt"
	"net/http"
	"os"
)

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8000"
	}
	host, _ := os.Hostname()
	who := fmt.Sprintf("host=%s session=%s version=%s\n", host, os.Getenv("CORRAL_SESSION_ID"), os.Getenv("VERSION"))
	http.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, who) })
	if err := http.ListenAndServe(":"+port, nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
