package runc

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	securejoin "github.com/cyphar/filepath-securejoin"
	"github.com/moby/sys/user"
	"golang.org/x/sys/unix"

	"github.com/corral-dev/corral/plugins/drivers"
)

// execUser is who a container's processes run as, in the container's terms.
type execUser struct {
	UID    int    `json:"uid"`
	GID    int    `json:"gid"`
	Groups []int  `json:"groups,omitempty"`
	Home   string `json:"home,omitempty"`
}

// resolveUser turns spec ("", "name", "uid", "name:group", "uid:gid") into
// ids, looking names up in the rootfs's /etc/passwd and /etc/group. An empty
// spec is root. Numeric ids need no entry in those files.
func resolveUser(rootfs, spec string) (*execUser, error) {
	passwd, err := securejoin.SecureJoin(rootfs, "/etc/passwd")
	if err != nil {
		return nil, err
	}
	group, err := securejoin.SecureJoin(rootfs, "/etc/group")
	if err != nil {
		return nil, err
	}
	u, err := user.GetExecUserPath(spec, &user.ExecUser{Home: "/"}, passwd, group)
	if err != nil {
		return nil, fmt.Errorf("%w: user %q: %v: give a uid[:gid] or a name listed in the image's /etc/passwd", drivers.ErrInvalidConfig, spec, err)
	}
	return &execUser{UID: u.Uid, GID: u.Gid, Groups: u.Sgids, Home: u.Home}, nil
}

// lookPathIn reports where name (argv[0] of a command) resolves inside
// rootfs, as the container's exec would: through the directories of
// pathEnv when name has no slash, else relative to cwd. It returns an
// ErrInvalidConfig error when name is not an executable file there. A
// candidate below one of mounts' destinations is looked for in the
// mount's source (e.g. corral's helper bound into cluster kernels).
func lookPathIn(rootfs, name, pathEnv, cwd string, mounts []drivers.Mount) (string, error) {
	var candidates []string
	if strings.Contains(name, "/") {
		if !path.IsAbs(name) {
			name = path.Join(cwd, name)
		}
		candidates = []string{name}
	} else {
		for _, dir := range filepath.SplitList(pathEnv) {
			if dir == "" {
				dir = "."
			}
			if !path.IsAbs(dir) {
				dir = path.Join(cwd, dir)
			}
			candidates = append(candidates, path.Join(dir, name))
		}
	}
	for _, c := range candidates {
		p, err := securejoin.SecureJoin(rootfs, c)
		if src, ok := mountedAt(mounts, c); ok {
			p, err = src, nil
		}
		if err != nil {
			continue
		}
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return c, nil
		} else if err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, unix.ENOTDIR) {
			// Something we cannot judge (permissions, loops): let the
			// container's own exec decide.
			return c, nil
		}
	}
	if strings.Contains(name, "/") {
		return "", fmt.Errorf("%w: command %q is not an executable file in the image", drivers.ErrInvalidConfig, name)
	}
	return "", fmt.Errorf("%w: command %q not found in the image's PATH %q", drivers.ErrInvalidConfig, name, pathEnv)
}

// mountedAt returns the host path of the container path c when c lies in
// one of mounts (the deepest destination wins).
func mountedAt(mounts []drivers.Mount, c string) (string, bool) {
	best, src := "", ""
	for _, m := range mounts {
		d := path.Clean(m.Destination)
		if c != d && !strings.HasPrefix(c, d+"/") {
			continue
		}
		if len(d) > len(best) {
			best, src = d, filepath.Join(m.Source, strings.TrimPrefix(c, d))
		}
	}
	return src, best != ""
}
