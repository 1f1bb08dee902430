package main

import (
	"io"
	"os"
	"path"
	"strings"
	"time"

	"github.com/pkg/sftp"
)

// rootHandlers serve SFTP requests inside one directory through os.Root:
// every path resolves below it, "/" being the directory itself, and no
// path ("..", an absolute symlink) leads out of it.
type rootHandlers struct{ root *os.Root }

func newRootHandlers(root *os.Root) sftp.Handlers {
	h := &rootHandlers{root: root}
	return sftp.Handlers{FileGet: h, FilePut: h, FileCmd: h, FileList: h}
}

// rel turns a client path into one relative to the root.
func rel(p string) string {
	p = strings.TrimPrefix(path.Clean("/"+p), "/")
	if p == "" {
		return "."
	}
	return p
}

func (h *rootHandlers) Fileread(r *sftp.Request) (io.ReaderAt, error) {
	return h.root.Open(rel(r.Filepath))
}

func (h *rootHandlers) Filewrite(r *sftp.Request) (io.WriterAt, error) {
	flags := os.O_WRONLY | os.O_CREATE
	pf := r.Pflags()
	if pf.Trunc {
		flags |= os.O_TRUNC
	}
	if pf.Excl {
		flags |= os.O_EXCL
	}
	if pf.Read {
		flags = flags&^os.O_WRONLY | os.O_RDWR
	}
	return h.root.OpenFile(rel(r.Filepath), flags, 0o644)
}

func (h *rootHandlers) Filecmd(r *sftp.Request) error {
	p := rel(r.Filepath)
	switch r.Method {
	case "Setstat":
		a := r.Attributes()
		fl := r.AttrFlags()
		if fl.Permissions {
			if err := h.root.Chmod(p, a.FileMode().Perm()); err != nil {
				return err
			}
		}
		if fl.Acmodtime {
			if err := h.root.Chtimes(p, a.AccessTime(), a.ModTime()); err != nil {
				return err
			}
		}
		if fl.Size {
			f, err := h.root.OpenFile(p, os.O_WRONLY, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			return f.Truncate(int64(a.Size))
		}
		return nil
	case "Rename", "PosixRename":
		return h.root.Rename(p, rel(r.Target))
	case "Rmdir", "Remove":
		return h.root.Remove(p)
	case "Mkdir":
		return h.root.Mkdir(p, 0o755)
	case "Link":
		return h.root.Link(rel(r.Target), p)
	case "Symlink":
		// The link's text stays as the client gave it; os.Root never
		// follows it out of the root.
		return h.root.Symlink(r.Target, p)
	}
	return sftp.ErrSSHFxOpUnsupported
}

type listerAt []os.FileInfo

func (l listerAt) ListAt(out []os.FileInfo, off int64) (int, error) {
	if off >= int64(len(l)) {
		return 0, io.EOF
	}
	n := copy(out, l[off:])
	if n < len(out) {
		return n, io.EOF
	}
	return n, nil
}

func (h *rootHandlers) Filelist(r *sftp.Request) (sftp.ListerAt, error) {
	p := rel(r.Filepath)
	switch r.Method {
	case "List":
		f, err := h.root.Open(p)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		ents, err := f.ReadDir(-1)
		if err != nil {
			return nil, err
		}
		out := make(listerAt, 0, len(ents))
		for _, e := range ents {
			if fi, err := e.Info(); err == nil {
				out = append(out, fi)
			}
		}
		return out, nil
	case "Stat":
		fi, err := h.root.Stat(p)
		if err != nil {
			return nil, err
		}
		return listerAt{fi}, nil
	case "Lstat":
		fi, err := h.root.Lstat(p)
		if err != nil {
			return nil, err
		}
		return listerAt{fi}, nil
	case "Readlink":
		target, err := h.root.Readlink(p)
		if err != nil {
			return nil, err
		}
		return listerAt{linkInfo(target)}, nil
	}
	return nil, sftp.ErrSSHFxOpUnsupported
}

// linkInfo carries a Readlink answer: pkg/sftp takes the name.
type linkInfo string

func (l linkInfo) Name() string       { return string(l) }
func (l linkInfo) Size() int64        { return 0 }
func (l linkInfo) Mode() os.FileMode  { return os.ModeSymlink }
func (l linkInfo) ModTime() time.Time { return time.Time{} }
func (l linkInfo) IsDir() bool        { return false }
func (l linkInfo) Sys() any           { return nil }
