package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"syscall"
	"time"

	"github.com/google/uuid"

	"github.com/corral-dev/corral/api"
)

// createAttempts bounds how often `session create` sends its request.
const createAttempts = 5

// createBackoff is the wait before the first retry of a create; it
// doubles for each further one.
var createBackoff = 250 * time.Millisecond

// createOnce creates a session under one idempotency key made for this
// invocation, and sends the create again under the same key when the
// answer got lost (503 while leadership moves, a connection that broke):
// the servers then return the session the first send made, if it got
// through, instead of creating a second one.
func createOnce(ctx context.Context, client *api.Client, req *api.CreateSessionRequest, stderr io.Writer) (*api.SessionDetail, error) {
	key := uuid.NewString()
	delay := createBackoff
	for attempt := 1; ; attempt++ {
		d, err := client.CreateSessionWithKey(ctx, req, key)
		if err == nil || attempt == createAttempts || !retryableCreate(err) || ctx.Err() != nil {
			return d, err
		}
		fmt.Fprintf(stderr, "create: %v; retrying in %s (idempotency key %s: no session is created twice)\n", err, delay, key)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(delay):
		}
		delay *= 2
	}
}

// retryableCreate tells the errors after which a create with an
// idempotency key is worth sending again: the server was unavailable or
// the connection broke before an answer came.
func retryableCreate(err error) bool {
	var ae *api.Error
	if errors.As(err, &ae) {
		switch ae.StatusCode {
		case http.StatusServiceUnavailable, http.StatusBadGateway, http.StatusGatewayTimeout:
			return true
		}
		return false
	}
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EPIPE)
}
