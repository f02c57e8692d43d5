package dsn

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"relay/internal/pipeline"
	"relay/internal/rewrite"
)

// processor records what Bounce hands to the pipeline.
type processor struct {
	in  []pipeline.Input
	err error
}

func (p *processor) Process(_ context.Context, in pipeline.Input) (pipeline.Result, error) {
	p.in = append(p.in, in)
	return pipeline.Result{}, p.err
}

// The report goes through the pipeline to the original sender, from <>, as a message
// submitted on this host, and the pipeline's error comes back.
func TestSenderBounce(t *testing.T) {
	r := Report{
		ID: "q1", Sender: "alice@example.com", Arrival: time.Now().Add(-time.Minute), Date: time.Now(), Message: msg("perm"),
		Failed: []Recipient{{Addr: "gone@example.net", Status: [3]int{5, 1, 1}, Diag: "550 5.1.1 no such user", Reply: true}},
	}
	p := &processor{}
	s := &Sender{Hostname: "relay.test", Pipeline: p}
	require.NoError(t, s.Bounce(context.Background(), r))
	require.Len(t, p.in, 1)
	in := p.in[0]
	require.Equal(t, []string{"alice@example.com"}, in.To)
	require.Equal(t, "", in.Envelope, "the null sender")
	require.Equal(t, "", in.ID, "the pipeline gives it an id of its own")
	require.Equal(t, "dsn", in.Client)
	require.Equal(t, rewrite.Received{Helo: "relay.test", ClientIP: "127.0.0.1", Proto: "LOCAL"}, in.Received)
	require.Equal(t, string(Build(r, "relay.test")), string(in.Data))

	p.err = errors.New("spool full")
	require.ErrorIs(t, s.Bounce(context.Background(), r), p.err)

	host, err := os.Hostname()
	require.NoError(t, err)
	p.in, p.err = nil, nil
	require.NoError(t, (&Sender{Pipeline: p}).Bounce(context.Background(), r))
	require.Equal(t, "dns; "+host, parseDSN(t, p.in[0].Data).perMessage.Get("Reporting-MTA"), "the host name by default")
}

// *pipeline.Pipeline is the Processor the relay uses.
var _ Processor = (*pipeline.Pipeline)(nil)
