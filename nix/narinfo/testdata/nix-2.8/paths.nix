# The expression the narinfo fixtures were built from; see README.
let
  x = builtins.path { path = ./x; name = "x"; };
  bb = builtins.path { path = ./bb; name = "busybox-static"; };
  t = builtins.toFile "note.txt" "see ${x}\n";
in {
  inherit t x;
  dep = derivation { name = "hello-dep"; system = builtins.currentSystem; builder = "${bb}/busybox"; args = ["sh" "-c" "echo ${x} > $out; echo ${t} >> $out"]; };
  fo = derivation { name = "fixed"; system = builtins.currentSystem; builder = "${bb}/busybox"; args = ["sh" "-c" "echo fixed > $out"]; outputHashMode = "flat"; outputHashAlgo = "sha256"; outputHash = builtins.hashString "sha256" "fixed\n"; };
}
