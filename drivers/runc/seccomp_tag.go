//go:build cgo && seccomp

package runc

// seccompBuilt says that libcontainer was built with seccomp support: the
// binary was built with cgo, libseccomp and the "seccomp" build tag
// (libcontainer's own condition; make build and make test pass it).
const seccompBuilt = true
