package executor

import (
	"context"
	"fmt"
	"net"
	"time"

	cnins "github.com/containernetworking/plugins/pkg/ns"
)

// ContainerdVersion is the version of the containerd hearth's config names, asked over its socket.
func (e *Executor) ContainerdVersion(ctx context.Context) (string, error) {
	c, err := e.connect(ctx)
	if err != nil {
		return "", err
	}
	v, err := c.Version(ctx)
	if err != nil {
		return "", fmt.Errorf("containerd at %s: %w", e.cfg.Containerd.Address, err)
	}
	return v.Version, nil
}

// ProbeBridge puts a network namespace on the jobs' bridge exactly as a job's prepare does, tries
// to open a TCP connection from it to each of addrs ("host:port"), and takes it off again. It
// returns the addresses it reached: from a job's network, none of the host's own should be.
func (e *Executor) ProbeBridge(ctx context.Context, id string, addrs []string) (reached []string, err error) {
	if err := ValidateID(id); err != nil {
		return nil, err
	}
	defer func() {
		if derr := e.detachBridge(context.WithoutCancel(ctx), id); derr != nil && err == nil {
			err = derr
		}
	}()
	path, err := e.attachBridge(ctx, id)
	if err != nil {
		return nil, err
	}
	ns, err := cnins.GetNS(path)
	if err != nil {
		return nil, fmt.Errorf("open the probe's network namespace: %w", err)
	}
	defer ns.Close()
	err = ns.Do(func(cnins.NetNS) error {
		for _, a := range addrs {
			d := net.Dialer{Timeout: time.Second}
			if c, err := d.DialContext(ctx, "tcp", a); err == nil {
				c.Close()
				reached = append(reached, a)
			}
		}
		return nil
	})
	return reached, err
}
