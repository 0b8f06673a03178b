# Declarations of the nixpkgs NixOS options hearth's modules set, each with the type nixpkgs gives
# it, so that the modules can be evaluated with nixpkgs' real module system (lib.evalModules from a
# nixpkgs lib) without the rest of nixpkgs. Only what the modules touch is declared; where nixpkgs
# sets a value itself that the modules rely on (a default, a derived option), it is set here the
# same way. Each group names the nixpkgs file it follows and the version read.
{ lib, ... }:
let
  inherit (lib) mkOption types;
  opt = type: default: mkOption { inherit type default; };
  req = type: mkOption { inherit type; };
  # nixos/lib/systemd-unit-options.nix (mid-2025 copy; the same types as
  # NixOS/nixpkgs@515c8fb59bc189b54fc47113d6248cd45f607f65): unit options are of the type "systemd
  # option", which accepts any value and merges equal definitions.
  unitOption = types.unspecified;
  unitNames = opt (types.listOf types.str) [ ];
  commonUnit = {
    enable = opt types.bool true;
    description = opt types.str "";
    wantedBy = unitNames;
    requiredBy = unitNames;
    requires = unitNames;
    wants = unitNames;
    after = unitNames;
    before = unitNames;
    bindsTo = unitNames;
    partOf = unitNames;
    conflicts = unitNames;
    unitConfig = opt (types.attrsOf unitOption) { };
    restartTriggers = opt (types.listOf types.unspecified) [ ];
  };
in
{
  options = {
    # nixos/modules/misc/assertions.nix @ 08062fccc11d1bf6e5e6a7bdc1e86eba3fb0c0bf
    assertions = opt (types.listOf types.unspecified) [ ];
    warnings = opt (types.listOf types.str) [ ];

    # nixos/modules/system/etc/etc.nix (2024 copy) — `source` is derived from `text` by nixpkgs;
    # the modules give `source` only.
    environment.etc = opt (types.attrsOf (
      types.submodule (
        { name, ... }:
        {
          options = {
            enable = opt types.bool true;
            target = opt types.str name;
            text = opt (types.nullOr types.lines) null;
            source = req types.path;
            mode = opt types.str "symlink";
            user = opt types.str "+0";
            group = opt types.str "+0";
          };
        }
      )
    )) { };
    # nixos/modules/config/system-path.nix @ 0354e8b747c8d69802d160ff408d1aece50472c9
    environment.systemPackages = opt (types.listOf types.package) [ ];

    # nixos/modules/config/users-groups.nix (index copy with `linger`, stateVersion 25.11 era) and
    # nixos/modules/services/networking/ssh/sshd.nix (openssh.authorizedKeys).
    users.users = opt (types.attrsOf (
      types.submodule (
        { name, config, ... }:
        {
          options = {
            name = opt types.str name;
            description = opt types.str "";
            uid = opt (types.nullOr types.int) null;
            isSystemUser = opt types.bool false;
            isNormalUser = opt types.bool false;
            group = opt types.str "";
            extraGroups = opt (types.listOf types.str) [ ];
            home = opt types.str "/var/empty";
            createHome = opt types.bool false;
            shell = opt (types.nullOr (types.either types.package types.str)) null;
            subUidRanges = opt (types.listOf (
              types.submodule {
                options = {
                  startUid = req types.int;
                  count = opt types.int 1;
                };
              }
            )) [ ];
            subGidRanges = opt (types.listOf (
              types.submodule {
                options = {
                  startGid = req types.int;
                  count = opt types.int 1;
                };
              }
            )) [ ];
            autoSubUidGidRange = opt types.bool false;
            openssh.authorizedKeys.keys = opt (types.listOf types.singleLineStr) [ ];
          };
          # As users-groups.nix: a normal user without ranges of its own gets an automatic one.
          config = lib.mkIf config.isNormalUser {
            group = lib.mkDefault "users";
            createHome = lib.mkDefault true;
            home = lib.mkDefault "/home/${name}";
            autoSubUidGidRange = lib.mkDefault (config.subUidRanges == [ ] && config.subGidRanges == [ ]);
          };
        }
      )
    )) { };
    users.groups = opt (types.attrsOf (
      types.submodule (
        { name, ... }:
        {
          options = {
            name = opt types.str name;
            gid = opt (types.nullOr types.int) null;
            members = opt (types.listOf types.str) [ ];
          };
        }
      )
    )) { };

    # nixos/modules/config/nix.nix @ 013635633ffe11f70df1d639f563f21c42c1f778
    nix.settings = opt (types.submodule {
      freeformType =
        let
          atom = types.nullOr (
            types.oneOf [
              types.bool
              types.int
              types.float
              types.str
              types.path
              types.package
            ]
          );
        in
        types.attrsOf (types.either atom (types.listOf atom));
      options = {
        sandbox = opt (types.either types.bool (types.enum [ "relaxed" ])) true;
        substituters = opt (types.listOf types.str) [ ];
        trusted-substituters = opt (types.listOf types.str) [ ];
        trusted-public-keys = opt (types.listOf types.str) [ ];
        trusted-users = opt (types.listOf types.str) [ ];
        allowed-users = opt (types.listOf types.str) [ "*" ];
        require-sigs = opt types.bool true;
      };
    }) { };
    # nixos/modules/services/system/nix-daemon.nix (index copy with nix.daemonUser)
    nix.package = req types.package;

    # nixos/modules/virtualisation/containerd.nix (index copy using lib.cli.toCommandLineGNU)
    virtualisation.containerd = {
      enable = opt types.bool false;
      settings = opt (types.attrsOf types.unspecified) { };
    };

    # nixos/lib/systemd-unit-options.nix, nixos/modules/system/boot/systemd.nix
    systemd.services = opt (types.attrsOf (
      types.submodule {
        options = commonUnit // {
          environment = opt (types.attrsOf (
            types.nullOr (
              types.oneOf [
                types.str
                types.path
                types.package
              ]
            )
          )) { };
          path = opt (types.listOf (types.either types.package types.str)) [ ];
          serviceConfig = opt (types.attrsOf unitOption) { };
          script = opt types.lines "";
          preStart = opt types.lines "";
          restartIfChanged = opt types.bool true;
          reloadIfChanged = opt types.bool false;
          stopIfChanged = opt types.bool true;
          startAt = opt (types.either types.str (types.listOf types.str)) [ ];
        };
      }
    )) { };
    systemd.timers = opt (types.attrsOf (
      types.submodule {
        options = commonUnit // {
          timerConfig = opt (types.attrsOf unitOption) { };
        };
      }
    )) { };
    # nixos/modules/system/boot/systemd/tmpfiles.nix @ 046599161540943279017d69898de50acb9cda3b
    systemd.tmpfiles.rules = opt (types.listOf types.str) [ ];

    # nixos/modules/services/continuous-integration/gitlab-runner/runner.nix
    # @ 01492b53ca0f58eb69d40365fadb7857cd2bf230
    services.gitlab-runner = {
      enable = opt types.bool false;
      settings = opt (types.submodule { freeformType = types.attrsOf types.unspecified; }) { };
      gracefulTermination = opt types.bool false;
      gracefulTimeout = opt types.str "infinity";
      extraPackages = opt (types.listOf types.package) [ ];
      services = opt (types.attrsOf (
        types.submodule {
          options = {
            authenticationTokenConfigFile = opt (types.nullOr types.path) null;
            registrationConfigFile = opt (types.nullOr types.path) null;
            registrationFlags = opt (types.listOf types.str) [ ];
            environmentVariables = opt (types.attrsOf types.str) { };
            description = opt (types.nullOr types.str) null;
            executor = opt types.str "docker";
            buildsDir = opt (types.nullOr types.path) null;
            limit = opt types.int 0;
            requestConcurrency = opt types.int 0;
          };
        }
      )) { };
    };

    # nixos/modules/services/networking/atticd.nix @ 2d43f87da257f12e5b67eeb1b8c1f47a994e50ea
    services.atticd = {
      enable = opt types.bool false;
      environmentFile = opt (types.nullOr types.path) null;
      settings = req (types.attrsOf types.unspecified);
      mode = opt (types.enum [
        "monolithic"
        "api-server"
        "garbage-collector"
      ]) "monolithic";
      user = opt types.str "atticd";
      group = opt types.str "atticd";
    };

    # nixos/modules/services/databases/postgresql.nix (index copy, stateVersion 25.11 → 17)
    services.postgresql = {
      enable = opt types.bool false;
      ensureDatabases = opt (types.listOf types.str) [ ];
      ensureUsers = opt (types.listOf (
        types.submodule {
          options = {
            name = req types.str;
            ensureDBOwnership = opt types.bool false;
          };
        }
      )) [ ];
      authentication = opt types.lines "";
    };

    # nixos/modules/services/web-servers/nginx/default.nix, vhost-options.nix
    # @ 0050271eb3b56e41703dc6ab04a11182317dd543, location-options.nix (2025 index copy)
    services.nginx = {
      enable = opt types.bool false;
      recommendedProxySettings = opt types.bool false;
      recommendedTlsSettings = opt types.bool false;
      recommendedOptimisation = opt types.bool false;
      clientMaxBodySize = opt types.str "10m";
      proxyTimeout = opt types.str "60s";
      appendHttpConfig = opt types.lines "";
      virtualHosts = opt (types.attrsOf (
        types.submodule {
          options = {
            forceSSL = opt types.bool false;
            enableACME = opt types.bool false;
            extraConfig = opt types.lines "";
            locations = opt (types.attrsOf (
              types.submodule {
                options = {
                  proxyPass = opt (types.nullOr types.str) null;
                  recommendedProxySettings = opt types.bool false;
                  extraConfig = opt types.lines "";
                };
              }
            )) { };
          };
        }
      )) { };
    };

    # nixos/modules/system/boot/resolved.nix @ db59d03371a1ca74896c812e1653d5bccc0bc0f4
    services.resolved.enable = opt types.bool false;

    # nixos/modules/tasks/network-interfaces.nix @ 003a3fd2f05c2fe13e1bb6db3158d33004723870; its
    # default there is config.system.nixos.distroId, which is "nixos".
    networking.hostName = opt (types.strMatching "^$|^[[:alnum:]]([[:alnum:]_-]{0,61}[[:alnum:]])?$") "nixos";

    # nixos/modules/services/monitoring/grafana.nix @ 88c82ee3ecd674f2a7a7f599170d505260849c49:
    # enable (line 300, an mkEnableOption), provision.dashboards (lines 1208–1257) and its
    # providers' type, grafanaTypes.dashboardConfig (lines 144–163): a submodule whose freeform
    # type is pkgs.formats.yaml's (any JSON-like value here), declaring name, type and options.path.
    # Grafana asserts that dashboards.settings and dashboards.path are not both set (lines 1800–1803).
    services.grafana = {
      enable = opt types.bool false;
      provision.dashboards = opt (types.submodule {
        options = {
          settings = opt (types.nullOr (
            types.submodule {
              options = {
                apiVersion = opt types.int 1;
                providers = opt (types.listOf (
                  types.submodule {
                    freeformType = types.attrsOf types.anything;
                    options = {
                      name = opt types.str "default";
                      type = opt types.str "file";
                      options.path = req types.path;
                    };
                  }
                )) [ ];
              };
            }
          )) null;
          path = opt (types.nullOr types.path) null;
        };
      }) { };
    };

    # nixos/modules/services/monitoring/prometheus/default.nix @
    # 020e024506ab147265c4a5757af92da617ef2dfb: enable (line 527), scrapeConfigs (lines 598–605, a
    # list of scrape_config, lines 163–280) with job_name and static_configs (line 263; its
    # static_config, lines 282–298: targets and labels). The scrape_config's other fields all have
    # defaults; none is set by hearth.
    services.prometheus = {
      enable = opt types.bool false;
      scrapeConfigs = opt (types.listOf (
        types.submodule {
          options = {
            job_name = req types.str;
            static_configs = opt (types.listOf (
              types.submodule {
                options = {
                  targets = req (types.listOf types.str);
                  labels = opt (types.attrsOf types.str) { };
                };
              }
            )) [ ];
          };
        }
      )) [ ];
    };

    # nixos/modules/security/acme/default.nix @ 014d882725c6ab65982a046f110b73214c0f5e1f
    security.acme = {
      acceptTerms = opt types.bool false;
      defaults.email = opt (types.nullOr types.str) null;
    };

    # nixos/modules/security/sudo.nix (2025 index copy)
    security.sudo.extraRules = opt (types.listOf (
      types.submodule {
        options = {
          users = opt (types.listOf (types.either types.str types.int)) [ ];
          groups = opt (types.listOf (types.either types.str types.int)) [ ];
          host = opt types.str "ALL";
          runAs = opt types.str "ALL:ALL";
          commands = req (
            types.listOf (
              types.either types.str (
                types.submodule {
                  options = {
                    command = req types.str;
                    options = opt (types.listOf types.str) [ ];
                  };
                }
              )
            )
          );
        };
      }
    )) [ ];

    # nixos/modules/services/networking/ssh/sshd.nix (2024 index copy)
    services.openssh = {
      enable = opt types.bool false;
      settings = opt (types.submodule {
        freeformType = types.attrsOf types.unspecified;
        options.PermitRootLogin = opt (types.nullOr (
          types.enum [
            "yes"
            "without-password"
            "prohibit-password"
            "forced-commands-only"
            "no"
          ]
        )) "prohibit-password";
      }) { };
    };
  };

  # As nix.nix: root is always trusted.
  config.nix.settings.trusted-users = [ "root" ];
}
