//go:build !cgo || !seccomp

package runc

// seccompBuilt says that libcontainer was built with seccomp support. It
// is false in this binary: libcontainer loads seccomp filters only when
// built with cgo and the "seccomp" build tag (go build -tags seccomp, as
// make build and make test do), which needs libseccomp-dev.
const seccompBuilt = false
