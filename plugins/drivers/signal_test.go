package drivers

import (
	"errors"
	"syscall"
	"testing"
)

func TestParseSignal(t *testing.T) {
	tests := []struct {
		in   string
		want syscall.Signal
		err  bool
	}{
		{"", syscall.SIGTERM, false},
		{"SIGTERM", syscall.SIGTERM, false},
		{"sigint", syscall.SIGINT, false},
		{"KILL", syscall.SIGKILL, false},
		{" hup ", syscall.SIGHUP, false},
		{"10", syscall.Signal(10), false},
		{"0", 0, true},
		{"65", 0, true},
		{"SIGNOPE", 0, true},
	}
	for _, tc := range tests {
		got, err := ParseSignal(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ParseSignal(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.err)
		}
		if err != nil && !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("ParseSignal(%q): %v is not ErrInvalidConfig", tc.in, err)
		}
	}
}
