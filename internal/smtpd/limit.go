package smtpd

import (
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"relay/internal/config"
)

// limits holds the message rate limiters (SPEC §10), one per user and one per client
// network. They outlive configuration reloads, so a SIGHUP does not refill every bucket.
type limits struct {
	mu    sync.Mutex
	users map[string]*rate.Limiter
	nets  map[netip.Prefix]*rate.Limiter
	swept time.Time
}

func newLimits() *limits {
	return &limits{users: map[string]*rate.Limiter{}, nets: map[netip.Prefix]*rate.Limiter{}}
}

// allow takes one message from the network's bucket and, for an authenticated user, from
// the user's. It returns "" when both allow it, else which limit refused ("network",
// "user"); a refused message takes no token from either.
func (l *limits) allow(now time.Time, user string, userRate config.Rate, network netip.Prefix, netRate config.Rate) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var taken []*rate.Reservation
	defer func() {
		for _, r := range taken {
			r.CancelAt(now)
		}
	}()
	if network.IsValid() && limited(netRate) {
		l.sweep(now)
		r := limiterFor(l.nets, network, netRate, now).ReserveN(now, 1)
		if !r.OK() || r.DelayFrom(now) > 0 {
			r.CancelAt(now)
			return "network"
		}
		taken = append(taken, r)
	}
	if user != "" && limited(userRate) {
		r := limiterFor(l.users, user, userRate, now).ReserveN(now, 1)
		if !r.OK() || r.DelayFrom(now) > 0 {
			r.CancelAt(now)
			return "user"
		}
	}
	taken = nil
	return ""
}

func limited(r config.Rate) bool { return r.N > 0 && r.Per > 0 }

// limiterFor returns k's limiter for r: N messages per Per, in bursts of up to N. A reload
// that changed r adjusts the existing bucket rather than starting a full one.
func limiterFor[K comparable](m map[K]*rate.Limiter, k K, r config.Rate, now time.Time) *rate.Limiter {
	every := rate.Limit(float64(r.N) / r.Per.Seconds())
	lim := m[k]
	if lim == nil {
		lim = rate.NewLimiter(every, r.N)
		m[k] = lim
		return lim
	}
	if lim.Limit() != every {
		lim.SetLimitAt(now, every)
	}
	if lim.Burst() != r.N {
		lim.SetBurstAt(now, r.N)
	}
	return lim
}

// maxNetBuckets bounds the per-network buckets (only clients in allow_networks get one,
// but a large allowed network has many /24s or /64s).
const maxNetBuckets = 65536

// sweep drops network buckets that have refilled: they are the same as a new one, and
// without this the map would grow with every client network ever seen. Past maxNetBuckets
// even partly drained buckets go (in map order, which Go randomises): a network whose bucket
// is forgotten starts again with a full one, which costs at most one burst.
func (l *limits) sweep(now time.Time) {
	if len(l.nets) >= maxNetBuckets {
		for k := range l.nets {
			delete(l.nets, k)
			if len(l.nets) < maxNetBuckets*7/8 {
				break
			}
		}
	}
	if len(l.nets) < 1024 || now.Sub(l.swept) < time.Minute {
		return
	}
	l.swept = now
	for k, lim := range l.nets {
		if lim.TokensAt(now) >= float64(lim.Burst()) {
			delete(l.nets, k)
		}
	}
}

// networkKey is the client network a per-network limit counts: the /24 of an IPv4 address,
// the /64 of an IPv6 one.
func networkKey(ip netip.Addr) netip.Prefix {
	if !ip.IsValid() {
		return netip.Prefix{}
	}
	bits := 24
	if ip.Is6() {
		bits = 64
	}
	p, _ := ip.Prefix(bits)
	return p
}
