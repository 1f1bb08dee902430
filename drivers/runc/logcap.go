package runc

import "github.com/corral-dev/corral/drivers/internal/logcap"

// DefaultMaxLogSize is how many bytes of each of a kernel's output streams
// the driver keeps on disk unless WithMaxLogSize says otherwise.
const DefaultMaxLogSize = logcap.DefaultMaxLogSize

// logDrainTimeout bounds how long the end of a container waits for the
// last of its output to reach the log files.
const logDrainTimeout = logcap.DrainTimeout
