# services.hearth-attic: the team's Attic server — atticd with a local PostgreSQL, its NARs and
# chunks in a Backblaze B2 bucket through B2's S3 endpoint, behind nginx with TLS. hearth pushes to
# it (`[cache] backend = "attic"`); hosts substitute from it.
{
  config,
  lib,
  ...
}:
let
  inherit (lib) mkOption mkEnableOption mkIf types;
  cfg = config.services.hearth-attic;
  inherit (import ./lib.nix { inherit lib; }) inStore;
in
{
  options.services.hearth-attic = {
    enable = mkEnableOption "an Attic binary-cache server on Backblaze B2, for hearth to push to";

    domain = mkOption {
      type = types.str;
      example = "attic.example.com";
      description = "The server's public name: nginx's virtual host, its ACME certificate, and the URL clients use (`https://<domain>/`).";
    };

    b2 = {
      bucket = mkOption {
        type = types.str;
        description = "The B2 bucket (private) that holds the NARs' chunks.";
      };
      region = mkOption {
        type = types.str;
        example = "us-west-004";
        description = "The bucket's region, as in its S3 endpoint.";
      };
      endpoint = mkOption {
        type = types.str;
        default = "https://s3.${cfg.b2.region}.backblazeb2.com";
        defaultText = lib.literalExpression ''"https://s3.''${region}.backblazeb2.com"'';
        description = "The bucket's S3 endpoint.";
      };
    };

    environmentFile = mkOption {
      type = types.str;
      example = "/run/secrets/atticd.env";
      description = ''
        A file outside the Nix store (a string path, so it is never copied there) with
        `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (a B2 application key restricted to the
        bucket) and `ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64` (the token-signing key:
        `openssl genrsa -traditional 4096 | base64 -w0`). atticd's settings land world-readable in
        the store; these never do.
      '';
    };

    acmeEmail = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "The address Let's Encrypt writes to about the certificate. Null: leave `security.acme` to the rest of the configuration.";
    };

    retention = mkOption {
      type = types.str;
      default = "3 months";
      description = "How long a path nobody fetched stays in the cache before garbage collection removes it (caches may set their own).";
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = !(inStore cfg.environmentFile);
        message = "services.hearth-attic.environmentFile = ${toString cfg.environmentFile} is in the Nix store, readable by every user: give the path of a file outside it, as a string.";
      }
    ];

    services.postgresql = {
      enable = true;
      ensureDatabases = [ "atticd" ];
      # atticd's unit runs as the user atticd, and the default peer authentication over
      # /run/postgresql lets that user in as the role of the same name: no password anywhere.
      ensureUsers = [
        {
          name = "atticd";
          ensureDBOwnership = true;
        }
      ];
    };

    services.atticd = {
      enable = true;
      environmentFile = cfg.environmentFile;
      settings = {
        listen = "127.0.0.1:8080";
        allowed-hosts = [ cfg.domain ];
        api-endpoint = "https://${cfg.domain}/";
        database.url = "postgresql:///atticd?host=/run/postgresql&user=atticd";
        storage = {
          type = "s3";
          inherit (cfg.b2) bucket region endpoint;
        };
        compression = {
          type = "zstd";
          level = 8;
        };
        # Chunking deduplicates what changes little between builds; NARs below the threshold are
        # stored whole.
        chunking = {
          nar-size-threshold = 65536;
          min-size = 16384;
          avg-size = 65536;
          max-size = 262144;
        };
        garbage-collection = {
          interval = "12 hours";
          default-retention-period = cfg.retention;
        };
      };
    };
    # B2 refuses the flexible-checksum headers current AWS SDKs send by default (400 "Unsupported
    # header 'x-amz-checksum-crc32'"); send checksums only where the API requires them. Not a
    # secret, so in the unit, not the environment file.
    systemd.services.atticd.environment = {
      AWS_REQUEST_CHECKSUM_CALCULATION = "when_required";
      AWS_RESPONSE_CHECKSUM_VALIDATION = "when_required";
    };
    # (atticd's own module orders it after PostgreSQL: the database URL names /run/postgresql.)

    services.nginx = {
      enable = true;
      recommendedTlsSettings = true;
      recommendedProxySettings = true;
      virtualHosts.${cfg.domain} = {
        forceSSL = true;
        enableACME = true;
        locations."/" = {
          proxyPass = "http://127.0.0.1:8080";
          recommendedProxySettings = true;
          # A push is one request per NAR, whatever its size (there is no chunked upload), and a
          # large one takes minutes: no body limit (nginx's default 1 MB answers 413), no
          # buffering of the upload to disk, and timeouts far above nginx's 60 s (a push cut off
          # there fails with 499 or "Bad NAR Hash or Size").
          extraConfig = ''
            client_max_body_size 0;
            proxy_request_buffering off;
            proxy_buffering off;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
            send_timeout 1h;
          '';
        };
      };
    };

    security.acme = mkIf (cfg.acmeEmail != null) {
      acceptTerms = true;
      defaults.email = cfg.acmeEmail;
    };
  };
}
