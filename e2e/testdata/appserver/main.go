// Command appserver is the app the apps e2e runs in a container kernel:
// HTTP on :8000 (/ answers with the path and the proxy's headers, /ip the
// kernel's addresses, /echo a WebSocket echo) and a line echo on TCP :9000.
package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"

	"github.com/coder/websocket"
)

func main() {
	go tcpEcho()
	mux := http.NewServeMux()
	mux.HandleFunc("/ip", func(w http.ResponseWriter, r *http.Request) {
		addrs, _ := net.InterfaceAddrs()
		var out []string
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() {
				out = append(out, n.IP.String())
			}
		}
		fmt.Fprintln(w, strings.Join(out, " "))
	})
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
		if err != nil {
			return
		}
		defer c.CloseNow()
		c.SetReadLimit(1 << 20)
		for {
			typ, data, err := c.Read(context.Background())
			if err != nil {
				return
			}
			if err := c.Write(context.Background(), typ, append([]byte("echo:"), data...)); err != nil {
				return
			}
		}
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "app method=%s path=%s query=%s prefix=%s auth=%q cookie=%q body=%s\n", r.Method, r.URL.Path, r.URL.RawQuery,
			r.Header.Get("X-Forwarded-Prefix"), r.Header.Get("Authorization"), r.Header.Get("Cookie"), body)
	})
	log.Fatal(http.ListenAndServe(":8000", mux))
}

// tcpEcho answers each line on :9000 with "tcp:" and the line, and closes
// its side when the client closed its.
func tcpEcho() {
	ln, err := net.Listen("tcp", ":9000")
	if err != nil {
		log.Fatal(err)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			sc := bufio.NewScanner(c)
			for sc.Scan() {
				fmt.Fprintf(c, "tcp:%s\n", sc.Text())
			}
		}()
	}
}
