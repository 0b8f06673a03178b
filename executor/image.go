package executor

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"strings"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
)

// NormalizeImage returns the full form of an image reference ("alpine" →
// "docker.io/library/alpine:latest"), as containerd's image store names images.
func NormalizeImage(ref string) (string, error) {
	n, err := reference.ParseDockerRef(ref)
	if err != nil {
		return "", fmt.Errorf("image %q is not a valid reference: %w", ref, err)
	}
	return n.String(), nil
}

// ensureImage returns the environment's image from containerd's image store, pulling it with the
// job's registry credentials when it is missing, and unpacking it when needed.
func (e *Executor) ensureImage(ctx context.Context, c *client.Client, env Environment, creds []Credential, log io.Writer) (client.Image, error) {
	ref, err := NormalizeImage(env.Image)
	if err != nil {
		return nil, envError(env, err)
	}
	// An image the job chose is pulled every time, with the job's credentials: the registry then
	// decides whether this job may have it (another project's private image may already be in
	// containerd's store), and a moved tag is followed. Layers already present are not fetched
	// again. A configured environment's image is pulled only when it is missing.
	if !env.Untrusted {
		img, err := c.GetImage(ctx, ref)
		if err == nil {
			if ok, err := img.IsUnpacked(ctx, ""); err == nil && ok {
				return img, nil
			}
			if err := img.Unpack(ctx, ""); err != nil {
				return nil, fmt.Errorf("unpack image %s: %w", ref, err)
			}
			return img, nil
		}
		if !errdefs.IsNotFound(err) {
			return nil, fmt.Errorf("look up image %s: %w", ref, err)
		}
	}
	fmt.Fprintf(log, "Pulling image %s\n", ref)
	resolver := docker.NewResolver(docker.ResolverOptions{
		Hosts: docker.ConfigureDefaultRegistries(
			docker.WithPlainHTTP(docker.MatchLocalhost),
			docker.WithAuthorizer(docker.NewDockerAuthorizer(docker.WithAuthCreds(credsFor(creds)))),
		),
	})
	img, err := c.Pull(ctx, ref, client.WithPullUnpack, client.WithResolver(resolver))
	if err != nil {
		return nil, envError(env, fmt.Errorf("pull image %s: %w", ref, err))
	}
	return img, nil
}

// credsFor answers the resolver's question "which login for this registry host?" from the job's
// credentials, whose URLs may or may not carry a scheme.
func credsFor(creds []Credential) func(host string) (string, string, error) {
	return func(host string) (string, string, error) {
		for _, c := range creds {
			if registryHost(c.Registry) == host {
				return c.Username, c.Password, nil
			}
		}
		return "", "", nil
	}
}

func registryHost(s string) string {
	if strings.Contains(s, "://") {
		if u, err := url.Parse(s); err == nil {
			return u.Host
		}
	}
	h, _, _ := strings.Cut(s, "/")
	return h
}
