package spool

import (
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
)

// Files of delivered messages are recycled instead of removed: on ext4 every new inode
// costs a scan for "recently deleted" inodes (ext4_new_inode, recently_deleted), which a
// spool that creates and removes a file per message pays on every message; profiles under
// load showed it costing more CPU than the RSA signature. A delivered message file is
// renamed to a free name, and a later message is written into it.
//
// Safety: a free file is reused only once a directory fsync that began after its rename
// has finished. Until then a crash could bring back the delivered message's name pointing
// at the inode, and overwriting it would turn a harmless repeat delivery into a corrupt one.
// A free file (and one half-rewritten at a crash) has the temp prefix, so Open removes it.

// The free files kept, at most maxRecycled of them holding at most maxRecycledBytes (a free
// file keeps its old content until reused); beyond that delivered files are removed. Enough
// to hold the backlog of a burst, so the next burst allocates no inode either.
const (
	maxRecycled      = 4096
	maxRecycledBytes = 64 << 20
)

type recycled struct {
	name  string // a name in the spool directory
	batch uint64 // the directory fsync that makes its rename durable
	size  int64
}

type recycler struct {
	mu    sync.Mutex
	free  []recycled
	bytes int64 // the sizes of free
	n     uint64
	// reused and created count message files written into a free file and into a new
	// one: the log line at Close tells an admin whether recycling works on their disk.
	reused, created atomic.Int64
}

// release renames the message file at path to a free name, or removes it when enough
// files are kept already. ticket is the directory-fsync batch that will cover the rename.
func (r *recycler) release(dir, path string, size int64, ticket func() uint64) error {
	r.mu.Lock()
	full := len(r.free) >= maxRecycled || r.bytes+size > maxRecycledBytes
	r.n++
	name := tmpPrefix + "free-" + strconv.FormatUint(r.n, 10)
	r.mu.Unlock()
	if full {
		return os.Remove(path)
	}
	if err := os.Rename(path, filepath.Join(dir, name)); err != nil {
		return err
	}
	t := ticket()
	r.mu.Lock()
	r.free = append(r.free, recycled{name: name, batch: t, size: size})
	r.bytes += size
	r.mu.Unlock()
	return nil
}

// take returns a free file whose rename is durable, or "".
func (r *recycler) take(synced func(uint64) bool) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, f := range r.free {
		if synced(f.batch) {
			r.free = append(r.free[:i], r.free[i+1:]...)
			r.bytes -= f.size
			return f.name
		}
	}
	return ""
}
