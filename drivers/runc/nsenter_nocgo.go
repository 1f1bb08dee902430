//go:build !cgo

package runc

// cgoEnabled says whether the binary holds libcontainer's nsenter stage;
// without cgo it does not, and the driver fingerprints as undetected.
const cgoEnabled = false
