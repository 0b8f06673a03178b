# Small helpers the modules share.
{ lib }:
{
  # A secret's path is in the store when it is a Nix path (copied there when used) or a string
  # under the store dir: every user and every job can read it there.
  inStore = p: builtins.isPath p || lib.hasPrefix builtins.storeDir (toString p);
}
