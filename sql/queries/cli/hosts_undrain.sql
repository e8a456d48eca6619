-- `sisy hosts undrain HOST`: the host claims again.
SELECT sisy.undrain($1)
