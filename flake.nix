{
  description = "hearth: a GitLab Runner custom executor for NixOS teams: each job in a containerd container on the host's warm /nix/store, what it builds pushed to a binary cache, NixOS systems deployed from protected refs";

  # No flake.lock is committed: lock it in your own flake (`inputs.hearth.inputs.nixpkgs.follows =
  # "nixpkgs"`), or run `nix flake lock` in a checkout. See the README's "Install on NixOS".
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      version = self.shortRev or self.dirtyShortRev or "dev";

      # The hash of what `go mod vendor` makes from go.mod and go.sum. nixos/flake_test.go computes
      # it and fails, naming the right value, when this one is stale.
      vendorHash = "sha256-qv9rpTgJd1tci4GlpnIZtusXrZTmc981m9C19iq5dwA=";

      hearthFor =
        pkgs:
        pkgs.buildGoModule {
          pname = "hearth";
          inherit version vendorHash;
          src = lib.fileset.toSource {
            root = ./.;
            fileset = lib.fileset.unions [
              ./go.mod
              ./go.sum
              (lib.fileset.fileFilter (f: f.hasExt "go" || f.hasExt "sh") ./.)
            ];
          };
          subPackages = [ "cmd/hearth" ];
          # Static: the same binary runs inside every job container as its agent, where there is no
          # /lib.
          env.CGO_ENABLED = 0;
          ldflags = [
            "-s"
            "-w"
            "-X main.version=${version}"
          ];
          # The tests need root and the real parts (containerd, nix-daemon, SSH targets): they run
          # with ./scripts/test.sh, not in the Nix sandbox.
          doCheck = false;
          meta = {
            description = "GitLab Runner custom executor: jobs in containerd on a warm Nix store, pushed to a binary cache, deployed";
            mainProgram = "hearth";
            platforms = lib.platforms.linux;
          };
        };

      # What CI jobs expect to find on their PATH: the job environment of runners without image:.
      ciEnvFor =
        pkgs:
        pkgs.buildEnv {
          name = "hearth-ci-env";
          paths = with pkgs; [
            bashInteractive
            coreutils
            findutils
            gnugrep
            gnused
            gawk
            gnutar
            gzip
            xz
            zstd
            git
            git-lfs
            openssh
            cacert
            curl
            jq
            nix
            # The artifact and cache stages run inside the job, as gitlab-runner's helper.
            gitlab-runner
          ];
          pathsToLink = [
            "/bin"
            "/etc"
            "/share"
          ];
        };
    in
    {
      packages = forAllSystems (pkgs: rec {
        hearth = hearthFor pkgs;
        default = hearth;
        ci-env = ciEnvFor pkgs;
        # The same environment as an OCI image, for runners that are not hearth (a Docker
        # executor, say): Nix in it uses a store of its own, registered at build time, as
        # nixpkgs' own Nix image does.
        ci-image = pkgs.dockerTools.buildLayeredImage {
          name = "hearth-ci";
          tag = version;
          contents = [
            ci-env
            pkgs.dockerTools.binSh
            pkgs.dockerTools.usrBinEnv
            pkgs.dockerTools.caCertificates
            pkgs.dockerTools.fakeNss
          ];
          extraCommands = ''
            mkdir -p etc/nix tmp root
            chmod 1777 tmp
            cat > etc/nix/nix.conf <<'EOF'
            build-users-group =
            sandbox = false
            experimental-features = nix-command flakes
            EOF
            export NIX_REMOTE="local?root=$PWD"
            export USER=nobody
            ${pkgs.nix}/bin/nix-store --load-db < ${pkgs.closureInfo { rootPaths = [ ci-env ]; }}/registration
          '';
          config = {
            Cmd = [ "/bin/bash" ];
            Env = [
              "PATH=/bin:/usr/bin"
              "SSL_CERT_FILE=/etc/ssl/certs/ca-bundle.crt"
              "NIX_SSL_CERT_FILE=/etc/ssl/certs/ca-bundle.crt"
              "USER=root"
              "HOME=/root"
            ];
          };
        };
      });

      nixosModules = {
        # The runner host. Its package and default job environment are this flake's.
        runner =
          { pkgs, lib, ... }:
          {
            imports = [ ./nixos/runner.nix ];
            services.hearth.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.hearth;
            services.hearth.ciEnv = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.ci-env;
          };
        attic-server = ./nixos/attic-server.nix;
        deploy-target = ./nixos/deploy-target.nix;
        default = self.nixosModules.runner;
      };

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = with pkgs; [
            go
            gopls
            nix
          ];
        };
      });

      checks = forAllSystems (pkgs: {
        package = self.packages.${pkgs.stdenv.hostPlatform.system}.hearth;
        # A runner host that runs one job through hearth. Needs KVM and nixpkgs: it cannot run on
        # the machines hearth's own CI runs on (see the README).
        vm = pkgs.testers.runNixOSTest (import ./nixos/tests/vm.nix { inherit self; });
      });
    };
}
