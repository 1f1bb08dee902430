package server

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/textproto"
	"strings"
)

// httpsListener serves TLS, and answers a client that speaks plain HTTP
// to it with a 400 whose JSON error says to use https (Go's http.Server
// would answer a bare "Bad Request" that the CLI cannot explain).
type httpsListener struct {
	net.Listener
	cfg *tls.Config
}

func (l httpsListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	// The check runs in the handshake's first read, on the connection's
	// own goroutine: Accept never waits for a client.
	return tls.Server(&plainHTTPGuard{Conn: c}, l.cfg), nil
}

// errPlainHTTP ends the TLS handshake of a client that spoke plain HTTP
// (after it got its answer).
var errPlainHTTP = errors.New("plain HTTP request on the https port")

// plainHTTPGuard looks at the first byte a client sends: a TLS handshake
// starts with record type 22; a letter starts an HTTP request line.
type plainHTTPGuard struct {
	net.Conn
	br *bufio.Reader
}

func (g *plainHTTPGuard) Read(p []byte) (int, error) {
	if g.br == nil {
		g.br = bufio.NewReaderSize(g.Conn, 4096)
		first, err := g.br.Peek(1)
		if err == nil && first[0] >= 'A' && first[0] <= 'Z' {
			g.answerPlainHTTP()
			return 0, errPlainHTTP
		}
	}
	return g.br.Read(p)
}

// answerPlainHTTP reads the request's head (as far as it fits the
// buffer) and answers 400 with where to go instead.
func (g *plainHTTPGuard) answerPlainHTTP() {
	tp := textproto.NewReader(g.br)
	line, _ := tp.ReadLine()
	hdr, _ := tp.ReadMIMEHeader()
	host := hdr.Get("Host")
	if host == "" {
		host = g.Conn.LocalAddr().String()
	}
	path := "/"
	if f := strings.Fields(line); len(f) >= 2 && strings.HasPrefix(f[1], "/") {
		path = f[1]
	}
	body, _ := json.Marshal(map[string]string{"error": fmt.Sprintf("this server speaks https: use https://%s%s (with CORRAL_ADDR=https://%s and the cluster's CA, -ca-cert)", host, path, host)})
	body = append(body, '\n')
	_, _ = fmt.Fprintf(g.Conn, "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
}
