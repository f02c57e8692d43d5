package deliver

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"

	"relay/internal/smtptest"
)

// BenchmarkPoolSend sends 10 KB messages over reused connections to a server that discards
// them: the cost of our side of a transaction (MAIL, RCPT, DATA, dot-stuffing) plus loopback.
func BenchmarkPoolSend(b *testing.B) {
	for _, bc := range []struct {
		name     string
		conns    int
		parallel bool
	}{
		{name: "1conn", conns: 1},
		{name: "8conns-parallel", conns: 8, parallel: true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			cfg := testConfig(smtptest.Start(b, smtptest.Discard()).Addr)
			cfg.Upstream.MaxConnections = bc.conns
			p, err := NewPool(cfg, nil)
			require.NoError(b, err)
			b.Cleanup(func() { p.Close() })
			line := bytes.Repeat([]byte("x"), 76)
			data := []byte("From: app@customer.example\r\nTo: rcpt@dest.example\r\nSubject: bench\r\n\r\n")
			for len(data) < 10*1024 {
				data = append(append(data, line...), '\r', '\n')
			}
			to := []string{"rcpt@dest.example"}
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			send := func() {
				if _, err := p.Send(b.Context(), "app@customer.example", to, data); err != nil {
					b.Fatal(err)
				}
			}
			if bc.parallel {
				b.SetParallelism(4)
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						send()
					}
				})
			} else {
				for b.Loop() {
					send()
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msg/s")
		})
	}
}
