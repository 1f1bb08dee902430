// Command netcheck is built by the e2e tests (CGO_ENABLED=0) and put into
// the MPI test image. It has two jobs:
//
//	netcheck rendezvous
//		a torchrun-style rendezvous from the launcher variables: rank 0
//		(NODE_RANK) listens on MASTER_PORT, the others dial
//		MASTER_ADDR:MASTER_PORT and say their rank and WORLD_SIZE; rank 0
//		exits 0 only when it heard WORLD_SIZE distinct ranks.
//	netcheck serve -addr :PORT
//	netcheck pingpong -addr HOST:PORT [-lat-iters N] [-bw-bytes B] [-bw-iters M]
//		a TCP ping-pong (the same program in kernels and on plain hosts,
//		for the benchmark's baseline); pingpong prints machine-readable
//		lines like pingpong.c's.
package main

import (
	"bufio"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: netcheck rendezvous | serve -addr :PORT | pingpong -addr HOST:PORT")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "rendezvous":
		err = rendezvous()
	case "serve":
		err = serve(os.Args[2:])
	case "pingpong":
		err = pingpong(os.Args[2:])
	default:
		err = fmt.Errorf("unknown subcommand %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "netcheck:", err)
		os.Exit(1)
	}
}

// envInt reads an integer variable; missing or malformed is an error.
func envInt(name string) (int, error) {
	v, ok := os.LookupEnv(name)
	if !ok {
		return 0, fmt.Errorf("%s is not set", name)
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("%s=%q: %v", name, v, err)
	}
	return n, nil
}

const rendezvousDeadline = 3 * time.Minute

func rendezvous() error {
	rank, err := envInt("NODE_RANK")
	if err != nil {
		return err
	}
	world, err := envInt("WORLD_SIZE")
	if err != nil {
		return err
	}
	port, err := envInt("MASTER_PORT")
	if err != nil {
		return err
	}
	addr := os.Getenv("MASTER_ADDR")
	host, _ := os.Hostname()
	fmt.Printf("rendezvous host=%s rank=%d world=%d master=%s:%d corral_rank=%s corral_nodes=%s corral_master=%s:%s\n",
		host, rank, world, addr, port, os.Getenv("CORRAL_NODE_RANK"), os.Getenv("CORRAL_NUM_NODES"),
		os.Getenv("CORRAL_MASTER_ADDR"), os.Getenv("CORRAL_MASTER_PORT"))
	// The conventional variables must agree with corral's own.
	for _, p := range [][2]string{{"NODE_RANK", "CORRAL_NODE_RANK"}, {"WORLD_SIZE", "CORRAL_NUM_NODES"},
		{"MASTER_ADDR", "CORRAL_MASTER_ADDR"}, {"MASTER_PORT", "CORRAL_MASTER_PORT"}} {
		if os.Getenv(p[0]) != os.Getenv(p[1]) {
			return fmt.Errorf("%s=%q but %s=%q", p[0], os.Getenv(p[0]), p[1], os.Getenv(p[1]))
		}
	}
	if addr == "" || world < 1 || rank < 0 || rank >= world {
		return fmt.Errorf("bad launcher variables: MASTER_ADDR=%q rank %d world %d", addr, rank, world)
	}
	if rank == 0 {
		return rendezvousMaster(world, port)
	}
	deadline := time.Now().Add(rendezvousDeadline)
	target := net.JoinHostPort(addr, strconv.Itoa(port))
	for {
		c, err := net.DialTimeout("tcp", target, 2*time.Second)
		if err != nil {
			if time.Now().After(deadline) {
				return fmt.Errorf("rank %d: master %s not reachable: %v", rank, target, err)
			}
			time.Sleep(100 * time.Millisecond)
			continue
		}
		_ = c.SetDeadline(deadline)
		fmt.Fprintf(c, "hello rank=%d world=%d host=%s\n", rank, world, host)
		line, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if err != nil {
			return fmt.Errorf("rank %d: no answer from the master: %v", rank, err)
		}
		if strings.TrimSpace(line) != "ok" {
			return fmt.Errorf("rank %d: master answered %q", rank, line)
		}
		fmt.Printf("rendezvous rank=%d joined master %s\n", rank, target)
		return nil
	}
}

func rendezvousMaster(world, port int) error {
	heard := map[int]string{0: "self"}
	if world == 1 {
		fmt.Println("rendezvous complete world=1 ranks=[0]")
		return nil
	}
	ln, err := net.Listen("tcp", ":"+strconv.Itoa(port))
	if err != nil {
		return fmt.Errorf("master: listen on port %d: %v", port, err)
	}
	defer ln.Close()
	deadline := time.Now().Add(rendezvousDeadline)
	_ = ln.(*net.TCPListener).SetDeadline(deadline)
	for len(heard) < world {
		c, err := ln.Accept()
		if err != nil {
			return fmt.Errorf("master: heard %d of %d ranks %v: %v", len(heard), world, keys(heard), err)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		var r, w int
		var h string
		if err == nil {
			_, err = fmt.Sscanf(strings.TrimSpace(line), "hello rank=%d world=%d host=%s", &r, &w, &h)
		}
		switch {
		case err != nil:
			fmt.Printf("rendezvous master: bad hello %q: %v\n", line, err)
		case w != world:
			c.Close()
			return fmt.Errorf("master: rank %d (%s) says world %d, mine is %d", r, h, w, world)
		case r <= 0 || r >= world:
			fmt.Printf("rendezvous master: rank %d out of range from %s\n", r, h)
		default:
			heard[r] = h
			fmt.Fprintln(c, "ok")
		}
		c.Close()
	}
	fmt.Printf("rendezvous complete world=%d ranks=%v\n", world, keys(heard))
	return nil
}

func keys(m map[int]string) []int {
	var out []int
	for k := range m {
		out = append(out, k)
	}
	sort.Ints(out)
	return out
}

// serve answers ping-pong connections: each starts with an 8-byte message
// size, then every message of that size is sent back.
func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	addr := fs.String("addr", ":7300", "listen address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	fmt.Printf("netcheck serving on %s\n", ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			var hdr [8]byte
			if _, err := io.ReadFull(c, hdr[:]); err != nil {
				return
			}
			n := binary.BigEndian.Uint64(hdr[:])
			if n == 0 || n > 1<<30 {
				return
			}
			buf := make([]byte, n)
			for {
				if _, err := io.ReadFull(c, buf); err != nil {
					return
				}
				if _, err := c.Write(buf); err != nil {
					return
				}
			}
		}()
	}
}

// roundTrips sends iters messages of n bytes on a new connection and
// returns the time they took (after warm-up round trips).
func roundTrips(addr string, n, warm, iters int) (time.Duration, error) {
	var c net.Conn
	var err error
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err = net.DialTimeout("tcp", addr, 2*time.Second); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return 0, err
	}
	defer c.Close()
	var hdr [8]byte
	binary.BigEndian.PutUint64(hdr[:], uint64(n))
	if _, err := c.Write(hdr[:]); err != nil {
		return 0, err
	}
	buf := make([]byte, n)
	var start time.Time
	for i := 0; i < warm+iters; i++ {
		if i == warm {
			start = time.Now()
		}
		if _, err := c.Write(buf); err != nil {
			return 0, err
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			return 0, err
		}
	}
	return time.Since(start), nil
}

func pingpong(args []string) error {
	fs := flag.NewFlagSet("pingpong", flag.ContinueOnError)
	addr := fs.String("addr", "", "server address host:port")
	latIters := fs.Int("lat-iters", 2000, "1-byte round trips")
	bwBytes := fs.Int("bw-bytes", 4<<20, "bandwidth message size")
	bwIters := fs.Int("bw-iters", 50, "bandwidth round trips")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *addr == "" {
		return fmt.Errorf("pingpong: -addr is required")
	}
	d, err := roundTrips(*addr, 1, *latIters/10+1, *latIters)
	if err != nil {
		return fmt.Errorf("latency: %v", err)
	}
	fmt.Printf("tcppingpong latency_us=%.2f bytes=1 iters=%d\n", float64(d.Microseconds())/float64(*latIters)/2, *latIters)
	d, err = roundTrips(*addr, *bwBytes, 2, *bwIters)
	if err != nil {
		return fmt.Errorf("bandwidth: %v", err)
	}
	fmt.Printf("tcppingpong bandwidth_MBps=%.1f bytes=%d iters=%d\n", 2*float64(*bwBytes)*float64(*bwIters)/d.Seconds()/1e6, *bwBytes, *bwIters)
	return nil
}
