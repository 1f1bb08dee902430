package vm

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// cpioWriter writes a "newc" cpio archive, the format of a Linux
// initramfs, without root tools: a guest's initramfs is made of the image's
// root filesystem and the task file, per task.
type cpioWriter struct {
	w   *bufio.Writer
	n   int64
	ino uint32
}

func newCpioWriter(w io.Writer) *cpioWriter {
	return &cpioWriter{w: bufio.NewWriterSize(w, 1<<20), ino: 1}
}

// header writes an entry's header and name, padded to 4 bytes.
func (c *cpioWriter) header(name string, mode uint32, size int64, rdevMajor, rdevMinor uint32) error {
	if size > 0xffffffff {
		return fmt.Errorf("%s: %d bytes is too large for an initramfs", name, size)
	}
	c.ino++
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, 1, 0, size, 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	if err := c.write([]byte(hdr)); err != nil {
		return err
	}
	if err := c.write(append([]byte(name), 0)); err != nil {
		return err
	}
	return c.pad()
}

func (c *cpioWriter) write(b []byte) error {
	n, err := c.w.Write(b)
	c.n += int64(n)
	return err
}

func (c *cpioWriter) pad() error {
	if r := c.n % 4; r != 0 {
		return c.write(make([]byte, 4-r))
	}
	return nil
}

// Dir adds a directory.
func (c *cpioWriter) Dir(name string, perm fs.FileMode) error {
	return c.header(name, syscall.S_IFDIR|uint32(perm.Perm()), 0, 0, 0)
}

// File adds a regular file with data.
func (c *cpioWriter) File(name string, perm fs.FileMode, data []byte) error {
	if err := c.header(name, syscall.S_IFREG|uint32(perm.Perm()), int64(len(data)), 0, 0); err != nil {
		return err
	}
	if err := c.write(data); err != nil {
		return err
	}
	return c.pad()
}

// Tree adds the directory tree at src below the archive path dst: its
// directories, regular files (hard links as copies) and symlinks, with
// their permission bits; sockets, pipes and device nodes are left out (the
// guest's devtmpfs has the devices).
func (c *cpioWriter) Tree(src, dst string) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		name := dst
		if rel != "." {
			name = dst + "/" + filepath.ToSlash(rel)
		}
		name = strings.TrimPrefix(name, "/")
		fi, err := d.Info()
		if err != nil {
			return err
		}
		mode := uint32(fi.Mode().Perm())
		if fi.Mode()&fs.ModeSetuid != 0 {
			mode |= syscall.S_ISUID
		}
		if fi.Mode()&fs.ModeSetgid != 0 {
			mode |= syscall.S_ISGID
		}
		if fi.Mode()&fs.ModeSticky != 0 {
			mode |= syscall.S_ISVTX
		}
		switch {
		case fi.IsDir():
			return c.header(name, syscall.S_IFDIR|mode, 0, 0, 0)
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			if err := c.header(name, syscall.S_IFLNK|0o777, int64(len(target)), 0, 0); err != nil {
				return err
			}
			if err := c.write([]byte(target)); err != nil {
				return err
			}
			return c.pad()
		case fi.Mode().IsRegular():
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			defer f.Close()
			if err := c.header(name, syscall.S_IFREG|mode, fi.Size(), 0, 0); err != nil {
				return err
			}
			n, err := io.Copy(c.w, io.LimitReader(f, fi.Size()))
			c.n += n
			if err != nil {
				return err
			}
			if n != fi.Size() {
				return fmt.Errorf("%s changed while archiving it", path)
			}
			return c.pad()
		}
		return nil
	})
}

// Close writes the trailer and flushes.
func (c *cpioWriter) Close() error {
	if err := c.header("TRAILER!!!", 0, 0, 0, 0); err != nil {
		return err
	}
	return c.w.Flush()
}
