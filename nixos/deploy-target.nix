# services.hearth-deploy-target: what a NixOS host needs to receive hearth's deploys — the team
# cache among its substituters with its key trusted, and SSH for the runner's deploy key, as root
# or as a deploy user allowed to run hearth-deploy-target (and nothing else) as root.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) mkOption mkEnableOption mkIf mkMerge types;
  cfg = config.services.hearth-deploy-target;
  asRoot = cfg.user == "root";
  # The one program hearth runs on a target (deploy/target.sh): every step of a deploy that
  # changes the host is one of its commands.
  targetScript = pkgs.writeScriptBin "hearth-deploy-target" (builtins.readFile ../deploy/target.sh);
  inherit (import ./lib.nix { inherit lib; }) inStore;
in
{
  options.services.hearth-deploy-target = {
    enable = mkEnableOption "receiving NixOS deploys from a hearth runner";

    substituters = mkOption {
      type = types.listOf types.str;
      example = [ "https://attic.example.com/team" ];
      description = "The team's binary cache(s), which hearth pushed the system to before deploying it: the host pulls its closure from there.";
    };

    trustedPublicKeys = mkOption {
      type = types.listOf types.str;
      example = [ "team:AAAA..." ];
      description = "The keys the cache signs with (Attic's `attic cache info` prints its key; for S3 and file caches, the public half of hearth's signing key).";
    };

    netrcFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/attic-netrc";
      description = ''
        For a private Attic cache: a netrc file outside the Nix store, e.g.
        `machine attic.example.com password <pull token>`, given to Nix as `netrc-file`.
      '';
    };

    user = mkOption {
      type = types.str;
      default = "root";
      example = "deploy";
      description = ''
        Who hearth logs in as (its target's `user`). `root`: hearth sends its own
        hearth-deploy-target. Any other name: the module creates that user, installs
        hearth-deploy-target, and gives the user one sudo rule, for that program alone.
      '';
    };

    authorizedKeys = mkOption {
      type = types.listOf types.singleLineStr;
      example = [ "ssh-ed25519 AAAA... hearth@runner" ];
      description = "The runner's deploy public key(s) (the public half of the target's `identity_file` in hearth's config).";
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      assertions = [
        {
          assertion = cfg.netrcFile == null || !(inStore cfg.netrcFile);
          message = "services.hearth-deploy-target.netrcFile = ${toString cfg.netrcFile} is in the Nix store, readable by every user: give the path of a file outside it, as a string.";
        }
        {
          assertion = cfg.authorizedKeys != [ ];
          message = "services.hearth-deploy-target.authorizedKeys is empty: give the runner's deploy public key, or hearth cannot log in.";
        }
      ];

      nix.settings = {
        inherit (cfg) substituters;
        trusted-public-keys = cfg.trustedPublicKeys;
      } // lib.optionalAttrs (cfg.netrcFile != null) { netrc-file = cfg.netrcFile; };

      services.openssh.enable = true;
    }

    (mkIf asRoot {
      # Keys only, no passwords (NixOS's default, said here because this module relies on it).
      services.openssh.settings.PermitRootLogin = "prohibit-password";
      users.users.root.openssh.authorizedKeys.keys = cfg.authorizedKeys;
    })

    (mkIf (!asRoot) {
      users.groups.${cfg.user} = { };
      users.users.${cfg.user} = {
        isSystemUser = true;
        group = cfg.user;
        description = "hearth deploys";
        home = "/var/lib/${cfg.user}";
        createHome = true;
        # A login shell, for hearth's commands over SSH.
        shell = pkgs.bashInteractive;
        openssh.authorizedKeys.keys = cfg.authorizedKeys;
      };
      environment.systemPackages = [ targetScript ];
      # The narrowest rule that works: this user may run this one store path, as root, without a
      # password — nothing else. It still grants root: hearth-deploy-target activates any system
      # it is given, substitutes from any cache with any key named, and writes unsigned paths to
      # the store (`serve`). Guard the deploy key as you would root's.
      security.sudo.extraRules = [
        {
          users = [ cfg.user ];
          runAs = "root";
          commands = [
            {
              command = "${targetScript}/bin/hearth-deploy-target";
              options = [ "NOPASSWD" ];
            }
          ];
        }
      ];
    })
  ]);
}
