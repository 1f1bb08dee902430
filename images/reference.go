package images

import (
	"errors"
	"fmt"
	"regexp"
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
		// The client's parser lets "..", empty path components and
		// the like through to the registry's URL: hold the reference to
		// the OCI grammar as well.
		if reason := checkGrammar(ref); reason != "" {
			return nil, bad(reason)
		}
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

// The OCI distribution grammar (distribution-spec, "Pulling manifests",
// and the reference grammar of distribution/reference).
var (
	pathComponentRe = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*$`)
	tagRe           = regexp.MustCompile(`^[\w][\w.-]{0,127}$`)
	digestRe        = regexp.MustCompile(`^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$`)
	hostRe          = regexp.MustCompile(`^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:.]+\])(?::[0-9]{1,5})?$`)
)

// checkGrammar checks ref against the OCI distribution grammar and returns
// the rule it breaks, or "" when it follows it. It is stricter than the
// registry client's own parser, which lets "..", empty path components and
// other oddities through to the registry's URL.
func checkGrammar(ref string) string {
	rest, digest, hasDigest := strings.Cut(ref, "@")
	if hasDigest && !digestRe.MatchString(digest) {
		return fmt.Sprintf("digest %q is not algorithm:hex (e.g. sha256:<64 hex digits>)", digest)
	}
	// A tag follows the last ':' that comes after the last '/' (a ':'
	// before it is the registry's port).
	if i := strings.LastIndex(rest, ":"); i > strings.LastIndex(rest, "/") {
		tag := rest[i+1:]
		rest = rest[:i]
		if !tagRe.MatchString(tag) {
			return fmt.Sprintf("tag %q is invalid: a tag is 1-128 letters, digits, '_', '.' or '-', not starting with '.' or '-'", tag)
		}
	}
	components := strings.Split(rest, "/")
	// The first component is a registry host when it has a '.' or a ':',
	// or is "localhost" (the rule docker and the registry client use).
	if len(components) > 1 {
		if h := components[0]; strings.ContainsAny(h, ".:") || h == "localhost" {
			if !hostRe.MatchString(h) {
				return fmt.Sprintf("registry %q is invalid: want a host name or IP address with an optional :port", h)
			}
			components = components[1:]
		}
	}
	repo := strings.Join(components, "/")
	for _, c := range components {
		switch {
		case c == "":
			return fmt.Sprintf("repository %q has an empty path component: path components are separated by single '/'", repo)
		case !pathComponentRe.MatchString(c):
			return fmt.Sprintf("path component %q of repository %q is invalid: components are lowercase letters and digits, "+
				"separated inside by '.', '_', '__' or dashes (no '..', '%%', upper case or other characters)", c, repo)
		}
	}
	if len(repo) > 255 {
		return fmt.Sprintf("repository name is %d characters long; the limit is 255", len(repo))
	}
	return ""
}

// RegistryOf returns the registry (host or host:port) an image reference
// pulls from, e.g. "index.docker.io" for "ubuntu".
func RegistryOf(ref string) (string, error) {
	r, err := parseReference(ref)
	if err != nil {
		return "", err
	}
	return r.Context().RegistryStr(), nil
}
