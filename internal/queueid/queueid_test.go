package queueid

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestNew(t *testing.T) {
	now := time.Unix(1795679746, 0)
	seen := map[string]bool{}
	for range 1000 {
		id := New(now)
		require.Len(t, id, 16)
		require.Regexp(t, `^[0-9a-v]{16}$`, id)
		require.False(t, seen[id], "duplicate id")
		seen[id] = true
	}
	require.Less(t, New(now), New(now.Add(time.Second)), "ids sort by arrival")
}
