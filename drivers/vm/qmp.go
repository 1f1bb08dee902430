package vm

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"time"
)

// qmp runs one command on qemu's monitor socket (QMP) and returns its
// error, if any: it connects, negotiates capabilities, sends the command
// and reads until the command's answer (skipping events).
func qmp(ctx context.Context, socket, command string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return fmt.Errorf("qmp: %w", err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	r := bufio.NewReader(conn)
	type reply struct {
		QMP    json.RawMessage `json:"QMP"`
		Return json.RawMessage `json:"return"`
		Error  *struct {
			Class string `json:"class"`
			Desc  string `json:"desc"`
		} `json:"error"`
		Event string `json:"event"`
	}
	read := func() (reply, error) {
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return reply{}, fmt.Errorf("qmp: %w", err)
			}
			var rep reply
			if err := json.Unmarshal(line, &rep); err != nil {
				return reply{}, fmt.Errorf("qmp: %w", err)
			}
			if rep.Event == "" {
				return rep, nil
			}
		}
	}
	if _, err := read(); err != nil { // the greeting
		return err
	}
	for _, cmd := range []string{"qmp_capabilities", command} {
		if _, err := fmt.Fprintf(conn, "{\"execute\":%q}\n", cmd); err != nil {
			return fmt.Errorf("qmp: %w", err)
		}
		rep, err := read()
		if err != nil {
			return err
		}
		if rep.Error != nil {
			return fmt.Errorf("qmp %s: %s: %s", cmd, rep.Error.Class, rep.Error.Desc)
		}
	}
	return nil
}
