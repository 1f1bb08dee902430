package guestproto

import (
	"bytes"
	"errors"
	"testing"
)

func TestFrameRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	in := []Frame{
		{Type: FrameHello},
		{Type: FrameStart, ID: 7, Payload: []byte(`{"command":["sh"]}`)},
		{Type: FrameStdout, ID: 1<<32 - 1, Payload: bytes.Repeat([]byte{0, 0xff}, 1000)},
	}
	for _, f := range in {
		if err := WriteFrame(&buf, f); err != nil {
			t.Fatal(err)
		}
	}
	for i, want := range in {
		got, err := ReadFrame(&buf)
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if got.Type != want.Type || got.ID != want.ID || !bytes.Equal(got.Payload, want.Payload) {
			t.Errorf("frame %d = %+v, want %+v", i, got, want)
		}
	}
	if err := WriteFrame(&buf, Frame{Type: FrameStdin, Payload: make([]byte, MaxPayload+1)}); !errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("oversized frame: err = %v", err)
	}
	// A header that announces too much is refused before reading it.
	if _, err := ReadFrame(bytes.NewReader([]byte{'O', 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff})); !errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("oversized header: err = %v", err)
	}
}
