// Package config reads hearth's one TOML file. Decoding is strict: an unknown key or a value of the
// wrong type is an error that names the key and its line, because a typo in a runner's config must
// not silently change what jobs are allowed to do.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/hearth-ci/hearth/nix"
)

// DefaultPath is where hearth looks for its config when neither --config nor $HEARTH_CONFIG is given.
const DefaultPath = "/etc/hearth/config.toml"

// Config is the whole file. Each section is plain data; the packages that act on it take the
// section they need.
type Config struct {
	Containerd   Containerd             `toml:"containerd"`
	Nix          Nix                    `toml:"nix"`
	Jobs         Jobs                   `toml:"jobs"`
	Environments map[string]Environment `toml:"environments"`
	Cache        Cache                  `toml:"cache"`
	Deploy       Deploy                 `toml:"deploy"`
	Metrics      Metrics                `toml:"metrics"`
}

// Containerd says which containerd daemon runs the job containers.
type Containerd struct {
	Address   string `toml:"address"`
	Namespace string `toml:"namespace"`
}

// Nix says which nix-daemons jobs build with: one shared by every job, or one per trust tier.
type Nix struct {
	// DaemonSocket and GCRootsDir describe the one shared tier of a runner without [nix.tiers].
	DaemonSocket string `toml:"daemon_socket"`
	GCRootsDir   string `toml:"gc_roots_dir"`
	// TierTables are [nix.tiers.protected] and [nix.tiers.unprotected]; read them with TierFor.
	TierTables map[string]Tier `toml:"tiers"`
}

// Jobs holds what applies to every job container.
type Jobs struct {
	BuildsRoot         string   `toml:"builds_root"`
	CacheRoot          string   `toml:"cache_root"`
	StateDir           string   `toml:"state_dir"`
	DefaultEnvironment string   `toml:"default_environment"`
	AllowedImages      []string `toml:"allowed_images"`
	Network            string   `toml:"network"`
	Bridge             Bridge   `toml:"bridge"`
	UIDMapStart        uint32   `toml:"uid_map_start"`
	UIDMapSize         uint32   `toml:"uid_map_size"`
	StopTimeout        Duration `toml:"stop_timeout"`
	// Each job's limits, and the most a job may ask for with HEARTH_MEMORY and the like (see
	// Limits; 0 means no limit, and an unset _max means the limit itself).
	Memory       Size    `toml:"memory"`
	MemoryMax    Size    `toml:"memory_max"`
	CPUs         float64 `toml:"cpus"`
	CPUsMax      float64 `toml:"cpus_max"`
	Pids         int64   `toml:"pids"`
	PidsMax      int64   `toml:"pids_max"`
	Nofile       int64   `toml:"nofile"`
	NofileMax    int64   `toml:"nofile_max"`
	TmpfsSize    Size    `toml:"tmpfs_size"`
	TmpfsSizeMax Size    `toml:"tmpfs_size_max"`
}

// Bridge is the network of jobs with network = "bridge": a Linux bridge with NAT to the outside,
// made with CNI's bridge and host-local plugins; each job gets an address on it in a network
// namespace of its own.
type Bridge struct {
	// Name is the bridge device on the host.
	Name string `toml:"name"`
	// Subnet is where jobs' addresses come from; the bridge (the jobs' gateway) takes its first.
	Subnet string `toml:"subnet"`
	// DNS are the name servers of jobs' resolv.conf; empty: the host's own, without loopback ones
	// (which a job cannot reach from its namespace).
	DNS []string `toml:"dns"`
	// PluginDirs are searched for the CNI plugins (bridge, host-local, firewall).
	PluginDirs []string `toml:"plugin_dirs"`
}

// Environment is what a job's container is made of: either a Nix store path whose bin/ goes on
// PATH (no image, so it starts at once) or an OCI image from containerd's image store.
type Environment struct {
	StorePath string   `toml:"store_path"`
	Image     string   `toml:"image"`
	Mounts    []string `toml:"mounts"`
}

// Cache says where what jobs build is pushed.
type Cache struct {
	// Backend is "file", "s3" or "attic".
	Backend string `toml:"backend"`
	// Push is "always", "protected" (only jobs on protected refs, as the job payload says) or "never".
	Push string `toml:"push"`
	// Required makes a failed push fail the job; otherwise it is a warning.
	Required bool `toml:"required"`
	// QueueDir holds the paths the post-build hook has queued and not yet pushed.
	QueueDir string `toml:"queue_dir"`
	// Uploads is how many paths are uploaded (and compressed) at once. Its key is "jobs", as in
	// nix copy's and attic push's own option.
	Uploads int        `toml:"jobs"`
	File    FileCache  `toml:"file"`
	S3      S3Cache    `toml:"s3"`
	Attic   AtticCache `toml:"attic"`
}

// FileCache is a binary-cache directory on this host.
type FileCache struct {
	Dir            string `toml:"dir"`
	SigningKeyFile string `toml:"signing_key_file"`
}

// S3Cache is a binary cache in an S3 bucket (Backblaze B2, or any S3).
type S3Cache struct {
	Bucket              string `toml:"bucket"`
	Region              string `toml:"region"`
	Endpoint            string `toml:"endpoint"`
	Prefix              string `toml:"prefix"`
	AccessKeyIDFile     string `toml:"access_key_id_file"`
	SecretAccessKeyFile string `toml:"secret_access_key_file"`
	SigningKeyFile      string `toml:"signing_key_file"`
}

// AtticCache is a cache on an Attic server.
type AtticCache struct {
	Endpoint  string `toml:"endpoint"`
	Cache     string `toml:"cache"`
	TokenFile string `toml:"token_file"`
}

// Metrics says where `hearth cache watch` serves Prometheus metrics. With Listen empty there are
// none, and the driver's stages record nothing.
type Metrics struct {
	// Listen is the address of the HTTP listener, e.g. "127.0.0.1:9863".
	Listen string `toml:"listen"`
}

// Mount is one parsed entry of Environment.Mounts.
type Mount struct {
	Host, Container string
}

// Default returns the configuration used for keys the file leaves out.
func Default() Config {
	return Config{
		Containerd: Containerd{Address: "/run/containerd/containerd.sock", Namespace: "hearth"},
		Nix:        Nix{DaemonSocket: nix.DaemonSocket, GCRootsDir: defaultGCRootsDir},
		Jobs: Jobs{
			BuildsRoot:         "/var/lib/hearth/builds",
			CacheRoot:          "/var/lib/hearth/cache",
			StateDir:           "/run/hearth",
			DefaultEnvironment: "default",
			Network:            "bridge",
			Bridge: Bridge{
				Name:       "hearth0",
				Subnet:     "10.217.0.0/16",
				PluginDirs: []string{"/usr/lib/cni", "/opt/cni/bin"},
			},
			UIDMapStart: 1 << 30,
			UIDMapSize:  65536,
			StopTimeout: Duration(5 * time.Second),
			Memory:      4 << 30,
			Pids:        4096,
			Nofile:      1024,
			TmpfsSize:   1 << 30,
		},
		Cache: Cache{
			Backend:  "file",
			Push:     "always",
			QueueDir: "/var/lib/hearth/queue",
			Uploads:  4,
			File:     FileCache{Dir: "/var/lib/hearth/binary-cache"},
			S3:       S3Cache{Region: "us-east-1"},
		},
		Deploy: defaultDeploy(),
	}
}

// PathFrom picks the config path: the flag when given, else $HEARTH_CONFIG, else DefaultPath.
func PathFrom(flag string) string {
	if flag != "" {
		return flag
	}
	if p := os.Getenv("HEARTH_CONFIG"); p != "" {
		return p
	}
	return DefaultPath
}

// Load reads, decodes and validates the file at path.
func Load(path string) (*Config, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("config file %s does not exist: create it (see config.toml.example) or pass --config", path)
		}
		return nil, fmt.Errorf("read config: %w", err)
	}
	c, err := Parse(src)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes and validates a config held in memory.
func Parse(src []byte) (*Config, error) {
	c := Default()
	md, err := toml.NewDecoder(bytes.NewReader(src)).Decode(&c)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("line %d: %s", pe.Position.Line, pe.Message)
		}
		// Type mismatches arrive as plain errors that already carry "line N (last key ...)".
		return nil, errors.New(strings.TrimPrefix(err.Error(), "toml: "))
	}
	if undecoded := md.Undecoded(); len(undecoded) > 0 {
		type unknown struct {
			line int
			key  string
		}
		var found []unknown
		for _, k := range undecoded {
			found = append(found, unknown{locateKey(src, k), k.String()})
		}
		sort.Slice(found, func(i, j int) bool { return found[i].line < found[j].line })
		var msgs []string
		for _, u := range found {
			msgs = append(msgs, fmt.Sprintf("line %d: unknown key %q", u.line, u.key))
		}
		return nil, fmt.Errorf("%s (see config.toml.example for the keys hearth knows)", strings.Join(msgs, "; "))
	}
	if err := c.validate(src, md); err != nil {
		return nil, err
	}
	return &c, nil
}
