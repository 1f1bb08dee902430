package structs

import "strings"

// IsDiskImage says whether a kernel's image names a disk image rather than
// an OCI image reference: an absolute path on the agent, a file:// URL or
// an http(s):// URL. Only the vm driver runs them (the disk becomes the
// guest's root); OCI references never start with "/" or a URL scheme.
func IsDiskImage(image string) bool {
	return strings.HasPrefix(image, "/") || strings.HasPrefix(image, "file://") ||
		strings.HasPrefix(image, "http://") || strings.HasPrefix(image, "https://")
}
