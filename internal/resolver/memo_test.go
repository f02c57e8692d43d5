package resolver

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/require"

	"relay/internal/dnstest"
)

const memoZone = `
example.org.       300 TXT "v=spf1 include:_spf.example.org -all"
_spf.example.org.  120 TXT "v=spf1 ip4:192.0.2.0/24 -all"
`

// Concurrent askers of one question, however they write the name, make one query; the
// TTL is the smallest of the answers, and failures do not count.
func TestMemo(t *testing.T) {
	s := dnstest.New(t, memoZone)
	m := NewMemo(newResolver(t, 2*time.Second, s.Addr))
	ctx := context.Background()
	_, known := m.TTL()
	require.False(t, known, "no answer yet")

	var wg sync.WaitGroup
	for _, name := range []string{"example.org", "EXAMPLE.org.", "example.ORG", "example.org."} {
		for range 25 {
			wg.Go(func() {
				txts, err := TXT(ctx, m, name)
				require.NoError(t, err)
				require.Equal(t, []string{"v=spf1 include:_spf.example.org -all"}, txts)
			})
		}
	}
	wg.Wait()
	require.Equal(t, 1, s.Total(), "one question, one query")
	ttl, known := m.TTL()
	require.True(t, known)
	require.Equal(t, uint32(300), ttl)

	_, err := m.Lookup(ctx, "_spf.example.org", dns.TypeTXT)
	require.NoError(t, err)
	s.SetServFail("fail.example.org", true)
	_, err = m.Lookup(ctx, "fail.example.org", dns.TypeTXT)
	require.Error(t, err)
	_, err = m.Lookup(ctx, "fail.example.org", dns.TypeTXT)
	require.Error(t, err, "the failure is remembered too")
	require.Equal(t, 3, s.Total())
	ttl, _ = m.TTL()
	require.Equal(t, uint32(120), ttl, "the smallest TTL of the answers")
}

// A caller that gives up while another asks its question gets a timeout at once.
func TestMemoWaiterGivesUp(t *testing.T) {
	s := dnstest.New(t, memoZone)
	s.SetSilent(true)
	m := NewMemo(newResolver(t, time.Minute, s.Addr))
	first, stop := context.WithCancel(context.Background())
	defer stop()
	go m.Lookup(first, "example.org", dns.TypeTXT)
	require.Eventually(t, func() bool { return s.Total() == 1 }, 10*time.Second, time.Millisecond)

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := m.Lookup(ctx, "example.org", dns.TypeTXT)
	var d *net.DNSError
	require.ErrorAs(t, err, &d)
	require.True(t, d.IsTimeout)
	require.Equal(t, 1, s.Total(), "the waiter did not ask again")
}
