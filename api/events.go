package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// Event topics of GET /v1/events.
const (
	// TopicSession: a session was created, changed or deleted; the payload
	// is the structs.Session.
	TopicSession = "session"
	// TopicKernel: a kernel changed; the payload is the structs.Kernel.
	TopicKernel = "kernel"
	// TopicNode: an agent registered or changed (status, drain,
	// occupancy); the payload is the structs.Agent.
	TopicNode = "node"
	// TopicEndpoint: an inference endpoint was created, changed (replicas,
	// spec) or deleted; the payload is the structs.Endpoint.
	TopicEndpoint = "endpoint"
)

// Event is one change of the event stream.
type Event struct {
	// Index is the raft index that applied the change.
	Index uint64 `json:"index"`
	// Topic is TopicSession, TopicKernel, TopicNode or TopicEndpoint.
	Topic string `json:"topic"`
	// Type is "created", "updated" or "deleted".
	Type string `json:"type"`
	// Key is the session, kernel or agent ID, or the endpoint's name.
	Key string `json:"key"`
	// Payload is the object as the change left it (for "deleted", as it
	// was).
	Payload json.RawMessage `json:"payload"`
}

// EventBatch is the events of one raft index that the caller may see; the
// SSE message carrying it has "id: <Index>".
type EventBatch struct {
	Index  uint64  `json:"index"`
	Events []Event `json:"events"`
}

// IsGone reports whether err says the events asked for are no longer held
// by the server (HTTP 410, or a stream that fell behind): reload the state
// and follow again from the index it was read at.
func IsGone(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.StatusCode == http.StatusGone
}

// Events follows GET /v1/events from index (0: from now) on the given
// topics (none: all), calling fn with each batch in index order. It
// returns when ctx ends (ctx's error), fn returns an error (that error),
// the server ends the stream (io.ErrUnexpectedEOF) or refuses it (an
// *Error; IsGone for events no longer held). To resume after any of these,
// call it again with the last batch's Index.
func (c *Client) Events(ctx context.Context, topics []string, index uint64, fn func(*EventBatch) error) error {
	q := url.Values{}
	if len(topics) > 0 {
		q.Set("topic", strings.Join(topics, ","))
	}
	if index > 0 {
		q.Set("index", strconv.FormatUint(index, 10))
	}
	resp, err := c.send(ctx, http.MethodGet, "/v1/events", q, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		return fmt.Errorf("GET /v1/events: the answer is %q, not an event stream", ct)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	var name string
	var data bytes.Buffer
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 { // end of one message
			if data.Len() > 0 {
				switch name {
				case "error":
					var e ErrorResponse
					_ = json.Unmarshal(data.Bytes(), &e)
					return &Error{StatusCode: http.StatusGone, Message: e.Error}
				case "events", "":
					var b EventBatch
					if err := json.Unmarshal(data.Bytes(), &b); err != nil {
						return fmt.Errorf("GET /v1/events: decoding an event: %w", err)
					}
					if err := fn(&b); err != nil {
						return err
					}
				}
			}
			name = ""
			data.Reset()
			continue
		}
		field, value, _ := bytes.Cut(line, []byte(":"))
		value = bytes.TrimPrefix(value, []byte(" "))
		switch string(field) {
		case "event":
			name = string(value)
		case "data":
			if data.Len() > 0 {
				data.WriteByte('\n')
			}
			data.Write(value)
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("GET /v1/events: %w", err)
	}
	return fmt.Errorf("GET /v1/events: the server ended the stream: %w", io.ErrUnexpectedEOF)
}
