package images

import (
	"errors"
	"fmt"
	"strings"
	"unicode"

	"github.com/google/go-containerregistry/pkg/name"
)

// Sentinel errors returned (wrapped) by the store; compare with errors.Is.
var (
	// ErrInvalidReference means an image reference could not be parsed.
	ErrInvalidReference = errors.New("invalid image reference")
	// ErrImageNotFound means the registry has no such repository, tag or
	// digest (or no variant for this platform), or that the image is not in
	// the local store.
	ErrImageNotFound = errors.New("image not found")
	// ErrRegistryUnreachable means the registry could not be reached (or
	// kept failing) after the configured number of attempts.
	ErrRegistryUnreachable = errors.New("registry unreachable")
	// ErrUnauthorized means the registry refused the credentials (or their
	// absence).
	ErrUnauthorized = errors.New("registry authentication failed")
	// ErrInvalidLayer means a layer is malformed or unsafe to unpack: path
	// traversal, links escaping the root filesystem, writes through
	// symlinks, or content that does not match its digest.
	ErrInvalidLayer = errors.New("invalid image layer")
)

const referenceHint = "expected [registry[:port]/]repository[:tag][@sha256:<64 hex digits>], " +
	"e.g. docker.io/library/ubuntu:22.04 or 127.0.0.1:5000/team/app@sha256:<digest>"

// ParseReference validates an image reference and returns its normalised
// form (registry, repository and tag spelled out, as in
// "index.docker.io/library/ubuntu:latest"). Malformed references give an
// error wrapping ErrInvalidReference that says what is wrong.
func ParseReference(ref string) (string, error) {
	r, err := parseReference(ref)
	if err != nil {
		return "", err
	}
	return r.Name(), nil
}

// parseReference parses ref with the given name options (name.Insecure for
// registries configured as plain HTTP).
func parseReference(ref string, opts ...name.Option) (name.Reference, error) {
	bad := func(reason string) error {
		return fmt.Errorf("%w %q: %s; %s", ErrInvalidReference, ref, reason, referenceHint)
	}
	switch {
	case ref == "":
		return nil, bad("the reference is empty")
	case strings.TrimSpace(ref) != ref:
		return nil, bad("the reference has leading or trailing white space")
	case strings.Contains(ref, "://"):
		return nil, bad("image references have no URL scheme (drop http:// or https://)")
	}
	for _, c := range ref {
		if unicode.IsSpace(c) || !unicode.IsPrint(c) {
			return nil, bad("the reference contains white space or control characters")
		}
	}
	r, err := name.ParseReference(ref, append([]name.Option{name.WeakValidation}, opts...)...)
	if err == nil {
		return r, nil
	}
	// name.ParseReference only says "could not parse"; ask the specific
	// parser for the reason.
	var reason error
	if strings.Contains(ref, "@") {
		_, reason = name.NewDigest(ref, opts...)
	} else {
		_, reason = name.NewTag(ref, opts...)
	}
	if reason == nil {
		reason = err
	}
	return nil, bad(strings.TrimPrefix(reason.Error(), "could not parse reference: "))
}
