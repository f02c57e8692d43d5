package spool

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	require.NoError(t, err)
	return fi.Sys().(*syscall.Stat_t).Ino
}

func TestRecycle(t *testing.T) {
	dir := t.TempDir()
	d, err := os.Open(dir)
	require.NoError(t, err)
	defer d.Close()
	g := newGroupSync(d.Sync)
	var r recycler

	long := strings.Repeat("first message, longer than the second\r\n", 100)
	require.NoError(t, writeFile(d, "a.msg", g.Sync, []byte("env\n"), []byte(long)))
	ino := inode(t, filepath.Join(dir, "a.msg"))
	require.NoError(t, r.release(dir, filepath.Join(dir, "a.msg"), int64(len(long)), g.Ticket))
	_, err = os.Stat(filepath.Join(dir, "a.msg"))
	require.ErrorIs(t, err, os.ErrNotExist)

	// Not reusable until a directory fsync that began after the rename has finished.
	require.Equal(t, "", r.take(g.Synced))
	require.NoError(t, g.Sync())
	free := r.take(g.Synced)
	require.NotEqual(t, "", free)
	require.True(t, strings.HasPrefix(free, tmpPrefix), "Open must remove a free file left at a crash")

	require.NoError(t, writeFileSync(d, "b.msg", free, true, g.Sync, []byte("env2\n"), []byte("short\r\n")))
	b, err := os.ReadFile(filepath.Join(dir, "b.msg"))
	require.NoError(t, err)
	require.Equal(t, "env2\nshort\r\n", string(b), "the old, longer content is truncated away")
	require.Equal(t, ino, inode(t, filepath.Join(dir, "b.msg")), "the inode is reused")
	_, err = os.Stat(filepath.Join(dir, free))
	require.ErrorIs(t, err, os.ErrNotExist)
	require.Equal(t, "", r.take(g.Synced))
}

func TestRecycleBounded(t *testing.T) {
	dir := t.TempDir()
	d, err := os.Open(dir)
	require.NoError(t, err)
	defer d.Close()
	g := newGroupSync(d.Sync)
	var r recycler
	release := func(n int, size int64) {
		for i := 0; i < n; i++ {
			name := filepath.Join(dir, "m.msg")
			require.NoError(t, os.WriteFile(name, []byte("x"), 0o600))
			require.NoError(t, r.release(dir, name, size, g.Ticket))
		}
	}
	count := func() int {
		ents, err := os.ReadDir(dir)
		require.NoError(t, err)
		return len(ents)
	}
	release(maxRecycled+5, 1)
	require.Equal(t, maxRecycled, count(), "at most maxRecycled files")

	dir = t.TempDir()
	r = recycler{}
	release(10, maxRecycledBytes/4)
	require.Equal(t, 4, count(), "at most maxRecycledBytes")
}
