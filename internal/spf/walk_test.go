package spf

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"relay/internal/dnstest"
)

// Walk counts what receivers count (RFC 7208 §4.6.4) over the whole include tree:
// lookups of include, a, mx, exists and redirect (not those after all), void lookups,
// loops, and the records it cannot follow.
func TestWalk(t *testing.T) {
	srv := dnstest.New(t, `
root.example.    TXT "v=spf1 include:one.example a mx:nomx.example include:loop.example exists:%{i}.x.example redirect=red.example"
root.example.    A   192.0.2.1
one.example.     TXT "v=spf1 include:two.example ip4:192.0.2.0/24 -all"
two.example.     TXT "v=spf1 a:gone.example ~all"
loop.example.    TXT "v=spf1 include:root.example -all"
red.example.     TXT "v=spf1 mx -all"
red.example.     MX  10 mx.red.example.
after.example.   TXT "v=spf1 -all include:one.example"
`)
	q := newResolver(t, time.Second, srv.Addr)
	rec, err := Parse("v=spf1 include:one.example a mx:nomx.example include:loop.example exists:%{i}.x.example redirect=red.example")
	require.NoError(t, err)
	n, err := Walk(context.Background(), q, "root.example", rec, true)
	require.NoError(t, err)
	// root: include, a, mx, include, exists, redirect = 6; one: include = 1; two: a = 1;
	// loop: its include (the loop, not followed) = 1; red: mx = 1.
	require.Equal(t, 10, n.Lookups)
	// mx:nomx.example (no MX) and a:gone.example (no address).
	require.Equal(t, 2, n.Voids)
	require.Len(t, n.Includes, 3)
	require.Equal(t, "include:one.example", n.Includes[0].Term)
	require.Equal(t, 2, n.Includes[0].Lookups)
	require.Equal(t, "include:loop.example", n.Includes[1].Term)
	require.Contains(t, n.Includes[1].Includes[0].Error, "loop")
	require.Equal(t, "redirect=red.example", n.Includes[2].Term)
	require.Contains(t, n.Notes, "exists:%{i}.x.example: has macros, which depend on the message: not followed")

	// Terms after all are never evaluated, so they cost nothing.
	rec, err = Parse("v=spf1 -all include:one.example")
	require.NoError(t, err)
	n, err = Walk(context.Background(), q, "after.example", rec, true)
	require.NoError(t, err)
	require.Equal(t, 0, n.Lookups)

	// A lookup that fails is reported, never counted as void.
	srv.SetServFail("one.example", true)
	rec, err = Parse("v=spf1 include:one.example -all")
	require.NoError(t, err)
	n, err = Walk(context.Background(), q, "x.example", rec, true)
	require.Error(t, err)
	require.True(t, n.Includes[0].Temporary)
	require.Equal(t, 0, n.Voids)
}
