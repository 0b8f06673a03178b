# A runner host in a VM (pkgs.testers.runNixOSTest): the runner module with its defaults — two trust
# tiers, the bridge network, the file cache — and one job run through hearth with `hearth exec`,
# which builds a derivation in the unprotected tier and, on a protected ref, in the protected one,
# whose output reaches the cache; the watcher's metrics count both. Needs KVM and nixpkgs; hearth's
# own CI cannot run it (see the README), so it runs as `nix build .#checks.x86_64-linux.vm` on a
# machine that can.
{ self }:
{ lib, ... }:
{
  name = "hearth-runner";

  nodes.machine =
    { pkgs, ... }:
    {
      imports = [ self.nixosModules.runner ];
      virtualisation.memorySize = 3072;
      virtualisation.diskSize = 4096;
      # No GitLab here: the job runs through `hearth exec`, which plays gitlab-runner's part.
      services.hearth = {
        enable = true;
        settings.cache.file.signing_key_file = "/etc/hearth/vm-test-1.secret";
      };
      services.gitlab-runner.enable = lib.mkForce false;
      environment.systemPackages = [ pkgs.curl ];
      environment.etc."hearth/ci/.gitlab-ci.yml".text = ''
        build:
          script:
            - echo 'derivation { name = "vm-job"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo built > $out" ]; }' > job.nix
            - nix-build --no-out-link job.nix
      '';
    };

  testScript = ''
    import re
    machine.wait_for_unit("containerd.service")
    machine.wait_for_unit("nix-daemon.socket")
    machine.wait_for_unit("hearth-nix-unprotected.service")
    machine.succeed("hearth cache keygen --dir /etc/hearth vm-test-1")
    machine.succeed("systemctl restart hearth-cache-watch.service")
    machine.succeed("hearth config check")

    # An unprotected job: its tier's store, nothing pushed.
    out = machine.succeed("cd /etc/hearth/ci && hearth exec -f .gitlab-ci.yml build 2>&1")
    assert "Nix: the unprotected tier" in out, out
    assert "Job succeeded" in out, out

    # The same job on a protected ref: the system store, pushed to the file cache.
    out = machine.succeed("cd /etc/hearth/ci && hearth exec --protected -f .gitlab-ci.yml build 2>&1")
    assert "Nix: the protected tier" in out, out
    machine.succeed("ls /var/lib/hearth/binary-cache/*.narinfo")

    # The watcher's metrics count both jobs' prepares and the protected job's push.
    metrics = machine.succeed("curl -sf http://127.0.0.1:9863/metrics")
    assert 'hearth_stage_duration_seconds_count{stage="prepare"} 2' in metrics, metrics
    assert re.search(r'^hearth_cache_pushed_paths_total\{backend="file"\} [1-9]', metrics, re.M), metrics

    # What the jobs left is gone after gc.
    machine.succeed("hearth gc")
    machine.fail("ctr -n hearth containers ls -q | grep .")
  '';
}
