set terminal pngcairo size 820,480 font 'DejaVu Sans,10'
set style line 1 lc rgb '#d62728' lw 2 pt 7 ps 0.8
set style line 2 lc rgb '#ff9896' lw 2 pt 5 ps 0.8
set style line 3 lc rgb '#1f77b4' lw 2 pt 9 ps 0.8
set style line 4 lc rgb '#9edae5' lw 2 pt 11 ps 0.8
set style line 5 lc rgb '#2ca02c' lw 2 pt 13 ps 0.8
set style line 6 lc rgb '#9467bd' lw 2 pt 3 ps 0.8
set grid
set key outside right
set output '/work/main/bench/out/20261123-163822/plots/s1_goodput.png'
set title 'S1: /db steady goodput vs concurrency (N=8, 50 ms; cap 160.0 2xx/s; 0 drawn at 1)'
set logscale xy; set xlabel 'connections (C)'; set ylabel '2xx per second'; set yrange [1:*]
plot '/work/main/bench/out/20261123-163822/plots/data/s1-ours.dat' using 1:2 with linespoints ls 1 title 'ours', '/work/main/bench/out/20261123-163822/plots/data/s1-ours-naive.dat' using 1:2 with linespoints ls 2 title 'ours-naive', '/work/main/bench/out/20261123-163822/plots/data/s1-jetty-qos.dat' using 1:2 with linespoints ls 3 title 'jetty-qos', '/work/main/bench/out/20261123-163822/plots/data/s1-jetty-naive.dat' using 1:2 with linespoints ls 4 title 'jetty-naive', '/work/main/bench/out/20261123-163822/plots/data/s1-haproxy.dat' using 1:2 with linespoints ls 5 title 'haproxy', 160.0 with lines lc rgb 'black' dt 3 title 'N/50 ms'
set output '/work/main/bench/out/20261123-163822/plots/s1_goodput_zoom.png'
set title 'S1: the same, linear scale near the cap (N=8)'
unset logscale y; set yrange [136:165]
plot '/work/main/bench/out/20261123-163822/plots/data/s1-ours.dat' using 1:2 with linespoints ls 1 title 'ours', '/work/main/bench/out/20261123-163822/plots/data/s1-ours-naive.dat' using 1:2 with linespoints ls 2 title 'ours-naive', '/work/main/bench/out/20261123-163822/plots/data/s1-jetty-qos.dat' using 1:2 with linespoints ls 3 title 'jetty-qos', '/work/main/bench/out/20261123-163822/plots/data/s1-jetty-naive.dat' using 1:2 with linespoints ls 4 title 'jetty-naive', '/work/main/bench/out/20261123-163822/plots/data/s1-haproxy.dat' using 1:2 with linespoints ls 5 title 'haproxy', 160.0 with lines lc rgb 'black' dt 3 title 'N/50 ms', 160.0 * 0.99 with lines lc rgb 'gray' dt 2 title '99%'
set logscale y
set output '/work/main/bench/out/20261123-163822/plots/s1_p99.png'
set title 'S1: p99 latency of 2xx answers (N=8); dashed: first request of each connection left out'
set ylabel 'ms'; set yrange [*:*]; set datafile missing '?'
plot '/work/main/bench/out/20261123-163822/plots/data/s1-ours.dat' using 1:3 with linespoints ls 1 title 'ours', '/work/main/bench/out/20261123-163822/plots/data/s1-ours.dat' using 1:4 with lines ls 1 dt 2 notitle, '/work/main/bench/out/20261123-163822/plots/data/s1-ours-naive.dat' using 1:3 with linespoints ls 2 title 'ours-naive', '/work/main/bench/out/20261123-163822/plots/data/s1-ours-naive.dat' using 1:4 with lines ls 2 dt 2 notitle, '/work/main/bench/out/20261123-163822/plots/data/s1-jetty-qos.dat' using 1:3 with linespoints ls 3 title 'jetty-qos', '/work/main/bench/out/20261123-163822/plots/data/s1-jetty-qos.dat' using 1:4 with lines ls 3 dt 2 notitle, '/work/main/bench/out/20261123-163822/plots/data/s1-jetty-naive.dat' using 1:3 with linespoints ls 4 title 'jetty-naive', '/work/main/bench/out/20261123-163822/plots/data/s1-jetty-naive.dat' using 1:4 with lines ls 4 dt 2 notitle, '/work/main/bench/out/20261123-163822/plots/data/s1-haproxy.dat' using 1:3 with linespoints ls 5 title 'haproxy', '/work/main/bench/out/20261123-163822/plots/data/s1-haproxy.dat' using 1:4 with lines ls 5 dt 2 notitle
set output '/work/main/bench/out/20261123-163822/plots/s1_latency_cdf.png'
set title 'S1 at C=1000: latency distribution (solid 2xx, dashed 503)'
unset logscale; set logscale x; set xlabel 'latency (ms)'; set ylabel 'fraction of answers'; set yrange [0:1]; set xrange [1:20000]
plot '/work/main/bench/out/20261123-163822/plots/data/cdf-ours-ok.dat' using 3:2 with lines ls 1 title 'ours 2xx', '/work/main/bench/out/20261123-163822/plots/data/cdf-ours-503.dat' using 3:2 with lines ls 1 dt 2 title 'ours 503', '/work/main/bench/out/20261123-163822/plots/data/cdf-jetty-qos-ok.dat' using 3:2 with lines ls 3 title 'jetty-qos 2xx', '/work/main/bench/out/20261123-163822/plots/data/cdf-jetty-qos-503.dat' using 3:2 with lines ls 3 dt 2 title 'jetty-qos 503', '/work/main/bench/out/20261123-163822/plots/data/cdf-jetty-naive-ok.dat' using 3:2 with lines ls 4 title 'jetty-naive 2xx', '/work/main/bench/out/20261123-163822/plots/data/cdf-haproxy-ok.dat' using 3:2 with lines ls 5 title 'haproxy 2xx', '/work/main/bench/out/20261123-163822/plots/data/cdf-haproxy-503.dat' using 3:2 with lines ls 5 dt 2 title 'haproxy 503'
set output '/work/main/bench/out/20261123-163822/plots/s2_cache_p99.png'
set title 'S2: /cache p99 (C=10) vs /db concurrency'
unset logscale; set logscale y; set xrange [*:*]; set yrange [*:*]; set xlabel '/db connections at the same time'; set ylabel 'cache p99 (ms)'
plot '/work/main/bench/out/20261123-163822/plots/data/s2-ours.dat' using 0:2:xtic(1) with linespoints ls 1 title 'ours', '/work/main/bench/out/20261123-163822/plots/data/s2-ours-naive.dat' using 0:2:xtic(1) with linespoints ls 2 title 'ours-naive', '/work/main/bench/out/20261123-163822/plots/data/s2-jetty-qos.dat' using 0:2:xtic(1) with linespoints ls 3 title 'jetty-qos', '/work/main/bench/out/20261123-163822/plots/data/s2-jetty-naive.dat' using 0:2:xtic(1) with linespoints ls 4 title 'jetty-naive', '/work/main/bench/out/20261123-163822/plots/data/s2-haproxy.dat' using 0:2:xtic(1) with linespoints ls 5 title 'haproxy'
