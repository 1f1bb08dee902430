// Package ibdev looks at the node's InfiniBand devices for the drivers'
// fingerprints.
package ibdev

import (
	"os"
	"strings"
)

// Verbs counts the node's /dev/infiniband verbs devices; 0 without
// InfiniBand.
func Verbs() int {
	entries, err := os.ReadDir("/dev/infiniband")
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "uverbs") {
			n++
		}
	}
	return n
}
