# services.hearth: a GitLab runner host whose jobs run through hearth — each in a containerd
# container on this host's warm Nix store, jobs on protected refs and all others in two trust tiers
# that never share a nix-daemon or a store, what protected jobs build pushed to the team's binary
# cache, and protected jobs' NixOS systems deployed.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib)
    mkOption
    mkEnableOption
    mkIf
    mkDefault
    mkMerge
    types
    literalExpression
    ;
  cfg = config.services.hearth;
  s = cfg.settings;
  toml = pkgs.formats.toml { };

  hearth = "${cfg.package}/bin/hearth";

  # An address hearth's [metrics] listen takes: an IPv4 address or a bracketed IPv6 one (with its
  # zone), and a port of 1 to 65535.
  octet = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
  port = "([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])";
  listenAddress = "(${octet}\\.${octet}\\.${octet}\\.${octet}|\\[[0-9a-fA-F:]*:[0-9a-fA-F:.]*(%[A-Za-z0-9_.-]+)?]):${port}";
  configFile = "/etc/hearth/config.toml";

  protectedSocket = "/nix/var/nix/daemon-socket/socket";
  u = cfg.unprotectedTier;
  unprotectedConfDir = "/etc/hearth/nix-unprotected";

  # The nix-daemon runs the hook with no arguments and as root, for every path it builds; hearth
  # queues it for the cache (only the protected tier's daemon, the system's, has the hook).
  postBuildHook = pkgs.writeShellScript "hearth-post-build-hook" ''
    exec ${hearth} --config ${configFile} cache hook
  '';

  # Job environments: the default, the same under the image names Nix pipelines already use, and
  # the operator's own.
  environments =
    {
      default.storePath = cfg.ciEnv;
    }
    // lib.genAttrs cfg.imageAliases (_: {
      storePath = cfg.ciEnv;
    })
    // cfg.environments;
  renderEnvironment =
    e:
    lib.filterAttrs (_: v: v != null) {
      store_path = if e.storePath or null == null then null else "${e.storePath}";
      image = e.image or null;
      mounts = e.mounts or [ ];
    };

  # The config hearth reads: the settings with nulls left out (TOML has none).
  rendered = s // {
    environments = lib.mapAttrs (_: renderEnvironment) environments // (s.environments or { });
  };
  settingsFile = toml.generate "hearth-config.toml" rendered;

  # A setting is a secret when its key ends in _file, known_hosts_file aside (host keys are public).
  secretPaths =
    let
      walk =
        prefix: v:
        if builtins.isAttrs v then
          lib.concatLists (lib.mapAttrsToList (k: walk (if prefix == "" then k else "${prefix}.${k}")) v)
        else if builtins.isList v then
          lib.concatLists (lib.imap0 (i: walk "${prefix}[${toString i}]") v)
        else
          [
            {
              name = prefix;
              value = v;
            }
          ];
      leaves = walk "" rendered;
      isSecret = l: lib.hasSuffix "_file" l.name && !lib.hasSuffix "known_hosts_file" l.name;
    in
    builtins.filter isSecret leaves
    ++ lib.mapAttrsToList (n: r: {
      name = "services.hearth.runners.${n}.authenticationTokenConfigFile";
      value = r.authenticationTokenConfigFile;
    }) cfg.runners;
  inherit (import ./lib.nix { inherit lib; }) inStore;

  # The job uid range, and the ranges it must stay clear of.
  jobStart = s.jobs.uid_map_start;
  jobEnd = jobStart + s.jobs.uid_map_size; # exclusive
  overlaps = start: count: start < jobEnd && jobStart < start + count;
  users = lib.attrValues config.users.users;
  explicitRanges = lib.concatMap (
    user:
    map (r: {
      inherit (user) name;
      inherit (r) startUid count;
    }) (user.subUidRanges or [ ])
  ) users;
  # NixOS gives each user with autoSubUidGidRange (on by default for normal users without ranges of
  # their own) one slot of 65536 ids from 100000 (update-users-groups.pl). Slots are remembered
  # when users go, so this counts the slots of today's users: a floor.
  autoUsers = builtins.filter (user: user.autoSubUidGidRange or false) users;
  autoEnd = 100000 + 65536 * builtins.length autoUsers;

  # trusted-users entries whose id is in the job range: a job would be trusted by the daemon.
  trustedEntries = config.nix.settings.trusted-users or [ ];
  # Nix matches a uid without a passwd entry by its number, so a number is a uid too.
  idOf =
    entry:
    if builtins.match "[0-9]+" entry != null then
      lib.toInt entry
    else if lib.hasPrefix "@" entry then
      config.users.groups.${lib.removePrefix "@" entry}.gid or null
    else
      config.users.users.${entry}.uid or null;
  trustedInRange = builtins.filter (
    e:
    let
      id = idOf e;
    in
    id != null && id >= jobStart && id < jobEnd
  ) trustedEntries;

  # Where the daemons' builds may not connect: fixed-output builds share the daemon's network. The
  # host's own loopback services, link-local (cloud metadata) and the jobs' bridge; the host's other
  # addresses are the operator's to add.
  daemonDeny = [
    "localhost"
    "link-local"
    "multicast"
    s.jobs.bridge.subnet
  ] ++ cfg.daemonNetwork.extraDeniedAddresses;
  daemonNetworkConfig = lib.optionalAttrs cfg.daemonNetwork.restrict (
    {
      IPAddressDeny = daemonDeny;
    }
    # Fetchers resolve names with the host's resolv.conf, which points at systemd-resolved's
    # stub on 127.0.0.53 when it runs; an allowed address wins over a denied one.
    // lib.optionalAttrs config.services.resolved.enable {
      IPAddressAllow = [ "127.0.0.53" ];
    }
  );

  unprotectedNixConf = pkgs.writeText "nix.conf" (lib.concatStringsSep "\n" (
    lib.mapAttrsToList (
      k: v:
      "${k} = ${
        if builtins.isList v then
          lib.concatMapStringsSep " " toString v
        else if builtins.isBool v then
          lib.boolToString v
        else
          toString v
      }"
    ) u.nixSettings
  ) + "\n");

  # Each tier's daemon socket and store root, as hearth's config has them.
  storeTiers =
    if s.nix ? tiers then
      lib.attrValues s.nix.tiers
    else
      [
        {
          daemon_socket = s.nix.daemon_socket;
          store_root = "/";
        }
      ];

  sizeType = types.either types.ints.unsigned types.str;
  # The most a job may ask for with HEARTH_<NAME>: by default the limit itself.
  maxOption =
    type: name:
    mkOption {
      inherit type;
      default = s.jobs.${name};
      defaultText = literalExpression "settings.jobs.${name}";
      description = "The most a job may ask for with `HEARTH_${lib.toUpper name}`.";
    };
  strOption =
    default: description:
    mkOption {
      type = types.str;
      inherit default description;
    };
  secretFile =
    description:
    mkOption {
      type = types.str;
      default = "";
      inherit description;
    };
in
{
  options.services.hearth = {
    enable = mkEnableOption "hearth, the GitLab Runner custom executor that runs each job in a containerd container on this host's Nix store";

    package = mkOption {
      type = types.package;
      description = "The hearth package. The flake's module sets it to the flake's `packages.<system>.hearth`.";
    };

    ciEnv = mkOption {
      type = types.package;
      description = ''
        The default job environment: a store path whose `bin/` is the job's PATH. The flake's module
        sets it to the flake's `packages.<system>.ci-env` (bash, coreutils, git, curl, jq, nix,
        gitlab-runner and the like).
      '';
    };

    imageAliases = mkOption {
      type = types.listOf types.str;
      default = [
        "nixos/nix"
        "nixos/nix:latest"
        "docker.io/nixos/nix"
        "docker.io/nixos/nix:latest"
        "nixpkgs/nix"
        "nixpkgs/nix:latest"
        "nixpkgs/nix-flakes"
        "nixpkgs/nix-flakes:latest"
        "nixpkgs/nix-unstable"
        "nixpkgs/nix-unstable:latest"
      ];
      description = ''
        Image names that run in the default environment (`ciEnv`) instead of being pulled, so that
        a `.gitlab-ci.yml` that says `image: nixos/nix:latest` runs on this host's warm store
        unchanged. An image name not listed here (nor in `environments`, nor allowed by
        `settings.jobs.allowed_images`) fails the job with a sentence naming it.
      '';
    };

    environments = mkOption {
      type = types.attrsOf (
        types.submodule {
          options = {
            storePath = mkOption {
              type = types.nullOr types.package;
              default = null;
              description = "A store path whose `bin/` is the job's PATH: the container starts at once. Give this or `image`.";
            };
            image = mkOption {
              type = types.nullOr types.str;
              default = null;
              description = "An OCI image reference, pulled for every job with the job's registry credentials. Give this or `storePath`.";
            };
            mounts = mkOption {
              type = types.listOf types.str;
              default = [ ];
              example = [ "/etc/ssl/certs:/etc/ssl/certs" ];
              description = "Extra read-only host paths, each `host:container`.";
            };
          };
        }
      );
      default = { };
      example = literalExpression ''{ rust.storePath = pkgs.buildEnv { name = "rust-ci"; paths = [ pkgs.cargo pkgs.bashInteractive pkgs.coreutils ]; }; }'';
      description = "More job environments, by the name a job gives in `image:`. `default` and `imageAliases` are there already.";
    };

    trustAllJobs = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Run every job with the system's nix-daemon and store, in one tier. Only for a runner whose
        every job is trusted: a build can rewrite a store path after the daemon registered it
        (CVE-2024-27297 and later advisories), so with one store a job on any branch can poison
        what a protected job builds, pushes with the team's key and deploys. Off (the default),
        jobs on unprotected refs get a second nix-daemon with a store of its own
        (`unprotectedTier`), and only protected jobs' builds reach the cache and deploys.
      '';
    };

    unprotectedTier = {
      storeRoot = strOption "/var/lib/hearth/unprotected" "The root of the unprotected tier's store: its paths live in `<storeRoot>/nix/store`, seen by its jobs as `/nix/store`.";
      socket = strOption "/run/hearth-unprotected/daemon-socket/socket" "The unprotected tier's nix-daemon socket.";
      buildUsers = mkOption {
        type = types.ints.positive;
        default = 8;
        description = ''
          How many build users the unprotected tier's daemon has (`hearth-nixbld1`…). They are not
          the system daemon's `nixbld` users: two daemons each keep their own record of which build
          user is busy, so sharing users would let a build of one tier run as the uid of a build of
          the other.
        '';
      };
      nixSettings = mkOption {
        type = types.attrsOf (
          types.oneOf [
            types.bool
            types.int
            types.str
            (types.listOf types.str)
          ]
        );
        default = { };
        example = {
          substituters = [ "https://attic.example.com/team" ];
          trusted-public-keys = [ "team:AAAA..." ];
          max-jobs = 2;
        };
        description = ''
          The unprotected tier daemon's nix.conf (its own `NIX_CONF_DIR`), beside what the module
          puts there (`sandbox`, `build-users-group`, `trusted-users = root`, `min-free`,
          `max-free`). It never has a `post-build-hook`: nothing it builds is queued for the cache.
          List the team cache in `substituters`, with its key, to let unprotected jobs substitute
          from it read-only.
        '';
      };
    };

    daemonNetwork = {
      restrict = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Give both tiers' nix-daemon units address filters (systemd's `IPAddressDeny`): a
          fixed-output build runs in the daemon's network namespace whatever the job's network
          mode, and would otherwise reach the host's loopback services and the cloud metadata
          address. The daemons' own traffic is filtered too: a binary cache on this host must be
          reached by an address the filter allows (the host's public name, not localhost).
        '';
      };
      extraDeniedAddresses = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [
          "10.0.0.0/8"
          "192.168.1.20"
        ];
        description = ''
          More addresses and prefixes the daemons' builds may not reach, such as this host's own
          LAN and public addresses (the filter has only localhost, link-local, multicast and the
          jobs' bridge by itself) and the private networks behind it. The daemons' own
          connections are filtered too: leave out the addresses of binary caches and remote
          builders (`nix.buildMachines`) they must reach.
        '';
      };
    };

    store = {
      minFree = mkOption {
        type = types.ints.unsigned;
        default = 5 * 1024 * 1024 * 1024;
        description = "When a store's file system has less than this many bytes free, its daemon collects garbage while it builds (`min-free`, for both tiers). hearth roots what it needs: the environments, queued paths and deployed systems.";
      };
      maxFree = mkOption {
        type = types.ints.unsigned;
        default = 20 * 1024 * 1024 * 1024;
        description = "How many bytes such a collection frees at most (`max-free`, for both tiers).";
      };
    };

    store.collectInterval = mkOption {
      type = types.str;
      default = "hourly";
      description = ''
        How often each tier's store is looked at while no build runs (a systemd calendar event):
        when its file system has less than `store.minFree` bytes free, garbage is collected until
        `store.maxFree` are, through that tier's daemon. hearth's roots keep what it needs.
      '';
    };

    cachePrune = {
      olderThan = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "90d";
        description = ''
          When set, `hearth-cache-prune.timer` runs `hearth cache prune --older-than <this>` at
          `cachePrune.interval`:
          a file or S3 (B2) cache otherwise grows for ever. What queued paths and the deploy
          targets' running systems need is kept. Not for Attic, which collects its own garbage.
        '';
      };
      interval = strOption "weekly" "When the prune runs (a systemd calendar event).";
    };

    metrics = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Whether `hearth-cache-watch.service` serves Prometheus metrics on `metrics.listen`: driver
          stage durations and failures, prepare failures by what failed, the push queue's depth and
          its oldest entry's age, rejected entries, paths and bytes pushed, push failures, deploys
          by result (`settings.metrics.listen`). Driver stages spool what they record under
          `settings.jobs.state_dir` for the watcher to fold in.
        '';
      };
      listen = mkOption {
        type = types.str;
        default = "127.0.0.1:9863";
        description = ''
          The metrics listener's address, an IP and a port. The default keeps them on this host;
          for a Prometheus elsewhere, listen on a private address and open the port to it alone.
        '';
      };
      grafanaDashboard = mkOption {
        type = types.bool;
        default = true;
        description = ''
          When `services.grafana` is enabled on this host, provision hearth's dashboard
          (`nixos/dashboards/hearth.json`: queue depth and age, pushes and failures, stage
          durations, deploys by result) through `services.grafana.provision.dashboards.settings`.
          Turn it off where `services.grafana.provision.dashboards.path` is used, and copy the
          file there.
        '';
      };
      prometheusScrape = mkOption {
        type = types.bool;
        default = true;
        description = "When `services.prometheus` is enabled on this host, add a scrape job named `hearth` for `metrics.listen`.";
      };
    };

    gcInterval = strOption "10min" "How often `hearth gc` removes what dead or cancelled jobs left: containers, snapshots, network namespaces, claims, roots of pushed paths (a systemd time span).";

    runners = mkOption {
      type = types.attrsOf (
        types.submodule {
          options = {
            authenticationTokenConfigFile = mkOption {
              type = types.str;
              example = "/run/secrets/gitlab-runner-hearth.env";
              description = ''
                A file, outside the Nix store, holding `CI_SERVER_URL=https://gitlab.example.com`
                and `CI_SERVER_TOKEN=glrt-…` (the runner's authentication token, from the project's
                or group's CI/CD runner settings). sops-nix, agenix or any secret manager can
                provide it.
              '';
            };
            description = mkOption {
              type = types.nullOr types.str;
              default = null;
              description = "The runner's description in GitLab.";
            };
            limit = mkOption {
              type = types.ints.unsigned;
              default = 0;
              description = "How many jobs this runner runs at once (0: no limit of its own; `concurrent` bounds them all).";
            };
            registrationFlags = mkOption {
              type = types.listOf types.str;
              default = [ ];
              description = "More arguments for `gitlab-runner register`.";
            };
          };
        }
      );
      default = { };
      description = "GitLab runners, registered through `services.gitlab-runner`, each running its jobs through hearth.";
    };

    concurrent = mkOption {
      type = types.ints.positive;
      default = 4;
      description = "How many jobs all runners on this host run at once (gitlab-runner's `concurrent`).";
    };

    settings = mkOption {
      description = ''
        hearth's configuration (`/etc/hearth/config.toml`; see `config.toml.example` for every key).
        The common keys are typed here, with hearth's defaults; any other key may be given as in
        the TOML file. Secrets are only ever file paths (keys ending in `_file`), never in the Nix
        store.
      '';
      default = { };
      type = types.submodule {
        freeformType = toml.type;
        options = {
          containerd.address = strOption "/run/containerd/containerd.sock" "The containerd socket.";
          jobs = {
            builds_root = strOption "/var/lib/hearth/builds" "Host directory of the jobs' builds dirs.";
            cache_root = strOption "/var/lib/hearth/cache" "Host directory of the per-project cache dirs.";
            state_dir = strOption "/run/hearth" "Per-job state (agent sockets: keep the path short) and skeleton roots.";
            network = mkOption {
              type = types.enum [
                "bridge"
                "host"
                "none"
              ];
              default = "bridge";
              description = "The jobs' network: `bridge` (a namespace of its own with NAT, not reaching the host or other jobs), `host` or `none`.";
            };
            bridge.subnet = strOption "10.217.0.0/16" "Where the jobs' addresses on the bridge come from.";
            bridge.plugin_dirs = mkOption {
              type = types.listOf types.str;
              default = [ "${pkgs.cni-plugins}/bin" ];
              defaultText = literalExpression ''[ "''${pkgs.cni-plugins}/bin" ]'';
              description = "Where the CNI plugins bridge, host-local, firewall and loopback are.";
            };
            uid_map_start = mkOption {
              type = types.ints.positive;
              # 2^30: clear of NixOS's automatic sub-uid slots (100000 + k·65536) and of Debian's
              # useradd (100000–600100000), below 2^31 (tools that read uids as signed). It is
              # inside systemd's container range (524288–1879048191), which only
              # `systemd-nspawn --private-users=pick` hands out.
              default = 1073741824;
              description = "The first host uid of the jobs' user namespace. Keep the range clear of every user's sub-uid ranges and of `trusted-users`.";
            };
            uid_map_size = mkOption {
              type = types.ints.positive;
              default = 65536;
              description = "How many uids the jobs' user namespace maps.";
            };
            memory = mkOption {
              type = sizeType;
              default = "4GiB";
              description = "Each job's memory limit (no swap; `/tmp` and `/root` count towards it).";
            };
            memory_max = maxOption sizeType "memory";
            cpus = mkOption {
              type = types.ints.unsigned;
              default = 0;
              description = "Each job's CPU limit in cores (0: none).";
            };
            cpus_max = maxOption types.ints.unsigned "cpus";
            pids = mkOption {
              type = types.ints.positive;
              default = 4096;
              description = "Each job's limit of processes and threads at once.";
            };
            pids_max = maxOption types.ints.positive "pids";
            nofile = mkOption {
              type = types.ints.positive;
              default = 1024;
              description = "Each job's open-files limit per process.";
            };
            nofile_max = maxOption types.ints.positive "nofile";
            tmpfs_size = mkOption {
              type = sizeType;
              default = "1GiB";
              description = "The size of each of the job's `/tmp` and `/root`.";
            };
            tmpfs_size_max = maxOption sizeType "tmpfs_size";
          };
          cache = {
            backend = mkOption {
              type = types.enum [
                "file"
                "s3"
                "attic"
              ];
              default = "file";
              description = "Where what jobs build is pushed: a directory on this host, an S3 bucket (Backblaze B2 included), or an Attic server.";
            };
            push = mkOption {
              type = types.enum [
                "always"
                "protected"
                "never"
              ];
              default = "always";
              description = "When jobs push. With trust tiers, unprotected jobs never push whatever this says.";
            };
            required = mkOption {
              type = types.bool;
              default = false;
              description = "Whether a failed push fails the job (as a system failure).";
            };
            queue_dir = strOption "/var/lib/hearth/queue" "Where the post-build-hook queues built paths.";
            file = {
              dir = strOption "/var/lib/hearth/binary-cache" "The file backend's cache directory.";
              signing_key_file = secretFile "The file backend's signing key (`hearth cache keygen NAME`), a path outside the store.";
            };
            s3 = {
              bucket = strOption "" "The bucket.";
              prefix = strOption "" "A key prefix inside the bucket.";
              region = strOption "us-east-1" "The bucket's region (Backblaze B2: e.g. `us-west-004`).";
              endpoint = mkOption {
                type = types.str;
                default = "";
                example = "https://s3.us-west-004.backblazeb2.com";
                description = "The S3 endpoint; empty for AWS.";
              };
              access_key_id_file = secretFile "A file holding the access key id.";
              secret_access_key_file = secretFile "A file holding the secret key.";
              signing_key_file = secretFile "A file holding the Nix signing key narinfos are signed with.";
            };
            attic = {
              endpoint = mkOption {
                type = types.str;
                default = "";
                example = "https://attic.example.com/";
                description = "The Attic server's base URL.";
              };
              cache = strOption "" "The cache's name on the Attic server.";
              token_file = secretFile "A file holding an Attic token that may push to the cache.";
            };
          };
        };
      };
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      assertions =
        [
          {
            assertion = !(overlaps 100000 (autoEnd - 100000)) || autoUsers == [ ];
            message = "services.hearth.settings.jobs.uid_map_start = ${toString jobStart} puts the jobs' uids (${toString jobStart}–${toString (jobEnd - 1)}) among the sub-uids NixOS hands out automatically (100000–${toString (autoEnd - 1)}, one range of 65536 per user with autoSubUidGidRange: ${lib.concatMapStringsSep ", " (x: x.name) autoUsers}): set it to 1073741824, hearth's default.";
          }
        ]
        ++ map (r: {
          assertion = !(overlaps r.startUid r.count);
          message = "services.hearth.settings.jobs.uid_map_start = ${toString jobStart}: the jobs' uids (${toString jobStart}–${toString (jobEnd - 1)}) overlap users.users.${r.name}.subUidRanges (${toString r.startUid}, ${toString r.count} ids): that user could enter the jobs' uids; move one of the ranges.";
        }) explicitRanges
        ++ [
          {
            assertion = !(builtins.elem "*" trustedEntries);
            message = "nix.settings.trusted-users holds \"*\": every job would be a trusted user of the nix-daemon (able to set any option and import unsigned paths). Leave it at [ \"root\" ] and name trusted users one by one.";
          }
          {
            assertion = trustedInRange == [ ];
            message = "nix.settings.trusted-users holds ${lib.concatStringsSep ", " trustedInRange}, whose id is in the jobs' uid range (${toString jobStart}–${toString (jobEnd - 1)}): jobs would be trusted by the nix-daemon. Remove it or move services.hearth.settings.jobs.uid_map_start.";
          }
          {
            assertion = s.cache.backend != "s3" || (s.cache.s3.bucket != "" && s.cache.s3.endpoint != "");
            message = "services.hearth.settings.cache.backend = \"s3\" needs cache.s3.bucket and cache.s3.endpoint (for Backblaze B2, https://s3.<region>.backblazeb2.com).";
          }
          {
            assertion = s.cache.backend != "attic" || (s.cache.attic.endpoint != "" && s.cache.attic.cache != "");
            message = "services.hearth.settings.cache.backend = \"attic\" needs cache.attic.endpoint (the server's URL) and cache.attic.cache (the cache's name).";
          }
        ]
        ++ [
          {
            # hearth refuses anything else, and every driver stage would fail on it.
            assertion = s.metrics.listen == "" || builtins.match listenAddress s.metrics.listen != null;
            message = "services.hearth.metrics.listen (settings.metrics.listen) = \"${s.metrics.listen}\": give an IP address and a port, e.g. \"127.0.0.1:9863\" or \"[::1]:9863\", not a host name.";
          }
        ]
        ++ map (p: {
          assertion = !(inStore p.value);
          message = "${p.name} = ${toString p.value} is in the Nix store, which every user and every job can read: give the path of a file outside it, as a string (\"/run/secrets/…\"), not a Nix path.";
        }) secretPaths;

      environment.etc."hearth/config.toml".source = settingsFile;
      # runc is containerd's; on PATH too, for `hearth doctor` to see it.
      environment.systemPackages = [
        cfg.package
        pkgs.runc
      ];

      services.hearth.settings = {
        metrics.listen = mkDefault (if cfg.metrics.enable then cfg.metrics.listen else "");
        nix =
          if cfg.trustAllJobs then
            {
              daemon_socket = mkDefault protectedSocket;
              gc_roots_dir = mkDefault "/nix/var/nix/gcroots/hearth";
            }
          else
            {
              tiers.protected = {
                daemon_socket = mkDefault protectedSocket;
                store_root = mkDefault "/";
                gc_roots_dir = mkDefault "/nix/var/nix/gcroots/hearth";
              };
              tiers.unprotected = {
                daemon_socket = mkDefault u.socket;
                store_root = mkDefault u.storeRoot;
                gc_roots_dir = mkDefault "${u.storeRoot}/nix/var/nix/gcroots/hearth";
              };
            };
      };

      virtualisation.containerd.enable = true;

      nix.settings = {
        sandbox = true;
        # trusted-users stays NixOS's [ "root" ]; the assertions refuse what would trust jobs.
        post-build-hook = postBuildHook;
        min-free = mkDefault cfg.store.minFree;
        max-free = mkDefault cfg.store.maxFree;
      };
      systemd.services.nix-daemon.serviceConfig = daemonNetworkConfig;

      systemd.tmpfiles.rules = [
        "d /etc/hearth 0755 root root -"
        "d ${s.jobs.builds_root} 0755 root root -"
        "d ${s.jobs.cache_root} 0755 root root -"
        "d ${s.jobs.state_dir} 0755 root root -"
        "d ${s.cache.queue_dir} 0700 root root -"
        "d /nix/var/nix/gcroots/hearth 0755 root root -"
      ] ++ lib.optional (s.cache.backend == "file") "d ${s.cache.file.dir} 0755 root root -";

      services.gitlab-runner = {
        enable = true;
        # A stop lets running jobs finish (gitlab-runner's SIGQUIT); hearth's own stages end
        # within stop_timeout of a SIGTERM.
        gracefulTermination = mkDefault true;
        gracefulTimeout = mkDefault "1h";
        settings.concurrent = cfg.concurrent;
        # What hearth runs besides itself: nix for store queries and copies, iptables for the
        # bridge's rules, ip to isolate each job's port on the bridge (hearth speaks SSH itself,
        # and finds the CNI plugins by plugin_dirs).
        extraPackages = [
          config.nix.package
          pkgs.iptables
          pkgs.iproute2
        ];
        services = lib.mapAttrs (
          _: r:
          {
            executor = "custom";
            inherit (r) authenticationTokenConfigFile limit description;
            registrationFlags =
              lib.concatMap
                (stage: [
                  "--custom-${stage}-exec"
                  hearth
                  "--custom-${stage}-args"
                  "driver"
                  "--custom-${stage}-args"
                  stage
                ])
                [
                  "config"
                  "prepare"
                  "run"
                  "cleanup"
                ]
              ++ [
                # SIGTERM to SIGKILL of a stage: hearth ends one within stop_timeout (5 s).
                "--custom-graceful-kill-timeout"
                "30"
              ]
              ++ r.registrationFlags;
          }
        ) cfg.runners;
      };

      # gitlab-runner starts hearth's stages, which need root: they talk to the root-only
      # containerd socket, set up user namespaces, make each job's network namespace (pinned
      # with a bind mount that containerd's runc must see, so the unit may not have a mount
      # namespace of its own: no ProtectSystem, ProtectHome, PrivateTmp or PrivateDevices) and
      # its iptables rules, and read the cache's and deploys' secrets. So: root, as the module's
      # own comment suggests, instead of DynamicUser (which implies all of those). Kept: no
      # personality changes, no realtime scheduling, native system calls only.
      systemd.services.gitlab-runner = mkIf config.services.gitlab-runner.enable {
        after = [
          "containerd.service"
          "nix-daemon.service"
        ] ++ lib.optional (!cfg.trustAllJobs) "hearth-nix-unprotected.service";
        wants = [ "containerd.service" ];
        serviceConfig = {
          DynamicUser = lib.mkForce false;
          User = "root";
          Group = "root";
          LockPersonality = true;
          RestrictRealtime = true;
          SystemCallArchitectures = "native";
        };
      };

      # Pushes the queue continuously, so what jobs build reaches the cache even when they fail.
      systemd.services.hearth-cache-watch = {
        description = "hearth: push what the nix-daemon builds to the binary cache";
        wantedBy = [ "multi-user.target" ];
        after = [
          "network-online.target"
          "nix-daemon.service"
        ];
        wants = [ "network-online.target" ];
        path = [ config.nix.package ];
        restartTriggers = [ settingsFile ];
        serviceConfig = {
          ExecStart = "${hearth} --config ${configFile} cache watch";
          Restart = "on-failure";
          RestartSec = "5s";
        };
      };

      # Collects each tier's store when its disk runs low, also while nothing builds (min-free
      # acts only during builds).
      systemd.services.hearth-store-gc = {
        description = "hearth: collect the tiers' Nix stores when their disks run low";
        path = [
          config.nix.package
          pkgs.coreutils
        ];
        script = lib.concatMapStrings (
          t:
          let
            root = if t.store_root == "/" then "" else t.store_root;
          in
          ''
            avail=$(df --output=avail -B1 ${root}/nix/store | tail -n 1)
            if [ "$avail" -lt ${toString cfg.store.minFree} ]; then
              NIX_REMOTE=unix://${t.daemon_socket} nix-store --gc --max-freed $(( ${toString cfg.store.maxFree} - avail ))
            fi
          ''
        ) storeTiers;
        serviceConfig.Type = "oneshot";
      };
      systemd.timers.hearth-store-gc = {
        wantedBy = [ "timers.target" ];
        timerConfig = {
          OnCalendar = cfg.store.collectInterval;
          Persistent = true;
        };
      };

      # Removes what dead or cancelled jobs left behind. In the host's mount namespace: it
      # unmounts jobs' network namespaces.
      systemd.services.hearth-gc = {
        description = "hearth: remove what dead or cancelled jobs left behind";
        after = [ "containerd.service" ];
        path = [
          config.nix.package
          pkgs.iptables
          pkgs.iproute2
        ];
        serviceConfig = {
          Type = "oneshot";
          ExecStart = "${hearth} --config ${configFile} gc";
        };
      };
      systemd.timers.hearth-gc = {
        wantedBy = [ "timers.target" ];
        timerConfig = {
          OnBootSec = "5min";
          OnUnitActiveSec = cfg.gcInterval;
        };
      };
    }

    # The dashboard, for a Grafana on this host. The directory is copied into the store as it is.
    (mkIf (cfg.metrics.enable && cfg.metrics.grafanaDashboard && config.services.grafana.enable) {
      assertions = [
        {
          assertion = config.services.grafana.provision.dashboards.path == null;
          message = "services.grafana.provision.dashboards.path is set, and Grafana takes either it or dashboard providers, not both: set services.hearth.metrics.grafanaDashboard = false and put hearth's nixos/dashboards/hearth.json in that directory.";
        }
      ];
      services.grafana.provision.dashboards.settings.providers = [
        {
          name = "hearth";
          options.path = ./dashboards;
        }
      ];
    })

    # A scrape job for a Prometheus on this host, of the address hearth listens on. Its instance
    # label is the host's name, not the loopback address every runner host shares, so that hosts
    # stay apart where their metrics meet (federation, remote write) and the dashboard's host
    # selector lists them by name.
    (mkIf (s.metrics.listen != "" && cfg.metrics.prometheusScrape && config.services.prometheus.enable) {
      services.prometheus.scrapeConfigs = [
        {
          job_name = "hearth";
          static_configs = [
            {
              targets = [ s.metrics.listen ];
              labels = lib.optionalAttrs (config.networking.hostName != "") {
                instance = config.networking.hostName;
              };
            }
          ];
        }
      ];
    })

    (mkIf (cfg.cachePrune.olderThan != null) {
      assertions = [
        {
          assertion = s.cache.backend != "attic";
          message = "services.hearth.cachePrune is for file and S3 caches: an Attic server collects its own garbage (services.hearth-attic.retention).";
        }
      ];
      systemd.services.hearth-cache-prune = {
        description = "hearth: remove from the binary cache what nobody needs any more";
        after = [ "network-online.target" ];
        wants = [ "network-online.target" ];
        path = [ config.nix.package ];
        serviceConfig = {
          Type = "oneshot";
          ExecStart = "${hearth} --config ${configFile} cache prune --older-than ${cfg.cachePrune.olderThan}";
        };
      };
      systemd.timers.hearth-cache-prune = {
        wantedBy = [ "timers.target" ];
        timerConfig = {
          OnCalendar = cfg.cachePrune.interval;
          Persistent = true;
        };
      };
    })

    (mkIf (!cfg.trustAllJobs) {
      # The unprotected tier: a second nix-daemon on a store of its own, with its own build users
      # and nix.conf, and no post-build-hook.
      users.groups.hearth-nixbld = { };
      users.users = lib.listToAttrs (
        map (
          i:
          lib.nameValuePair "hearth-nixbld${toString i}" {
            description = "hearth unprotected-tier Nix build user ${toString i}";
            isSystemUser = true;
            group = "hearth-nixbld";
            extraGroups = [ "hearth-nixbld" ];
          }
        ) (lib.range 1 u.buildUsers)
      );

      services.hearth.unprotectedTier.nixSettings = {
        build-users-group = "hearth-nixbld";
        sandbox = true;
        trusted-users = [ "root" ];
        min-free = mkDefault cfg.store.minFree;
        max-free = mkDefault cfg.store.maxFree;
      };
      environment.etc."hearth/nix-unprotected/nix.conf".source = unprotectedNixConf;

      systemd.tmpfiles.rules = [ "d ${u.storeRoot} 0755 root root -" ];

      systemd.services.hearth-nix-unprotected = {
        description = "Nix daemon of hearth's unprotected tier";
        wantedBy = [ "multi-user.target" ];
        before = [ "gitlab-runner.service" ];
        path = [ config.nix.package ];
        environment = {
          NIX_CONF_DIR = unprotectedConfDir;
          NIX_DAEMON_SOCKET_PATH = u.socket;
          # The store is local, under storeRoot: a daemon whose store were "daemon" would serve
          # each client by connecting to itself.
          NIX_REMOTE = "local";
        };
        restartTriggers = [ unprotectedNixConf ];
        serviceConfig = {
          ExecStart = "${config.nix.package}/bin/nix-daemon --store ${u.storeRoot}";
          ExecStartPre = "${pkgs.coreutils}/bin/mkdir -p ${dirOf u.socket}";
          # As the system's nix-daemon unit: a restart leaves running builds alone.
          KillMode = "process";
          Restart = "always";
          LimitNOFILE = 1048576;
        } // daemonNetworkConfig;
      };
    })
  ]);
}
