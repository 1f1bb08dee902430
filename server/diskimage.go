package server

import (
	"github.com/corral-dev/corral/images"
	"github.com/corral-dev/corral/structs"
)

// checkImageRef checks a kernel's image for its driver: a disk image (an
// absolute path on the agent, a file:// or http(s):// URL; see
// structs.IsDiskImage) only for the vm driver, which boots it as the
// guest's root disk and checks the file itself; anything else must parse
// as an OCI reference (pulled by the agent, checked against the registry
// policy).
func checkImageRef(driver, image string) error {
	if structs.IsDiskImage(image) {
		if driver != "vm" {
			return badRequest("image %q is a disk image (a path or URL), which only driver vm boots: use -driver vm, or give an OCI image reference", image)
		}
		return nil
	}
	if _, err := images.ParseReference(image); err != nil {
		return badRequest("%v", err)
	}
	return nil
}
