# Plots the restart timeline written by `pgco_bench_recovery --timeline-out FILE`.
#
#   gnuplot -e "datafile='FILE'; outfile='docs/recovery-timeline.png'; down1=78; accept1=194; \
#               title1='...'; accept2=217; title2='...'; subtitle='...'" \
#           benchmarks/recovery-timeline.gp
#
# Block 0 of FILE is the run with the short retry backoff, block 1 (optional, when accept2 is
# given) the run with the default backoff. Columns: bucket start (ms, relative to the restart
# command), bucket middle, successful queries, failed queries, per 100 ms bucket.

if (!exists("datafile")) datafile = 'recovery-timeline.dat'
if (!exists("outfile")) outfile = 'recovery-timeline.png'
if (!exists("title1")) title1 = 'retry backoff 0, 0.1, 0.2 s'
if (!exists("title2")) title2 = 'retry backoff 0, 2, 4 s (default)'
if (!exists("subtitle")) subtitle = ''

set terminal pngcairo size 1100,560 enhanced font 'DejaVu Sans,11'
set output outfile
set title "pgco under load during a PostgreSQL restart (pg\\_ctl restart -m fast)\n{/*0.85 ".subtitle."}"
set xlabel 'time since the restart command (ms)'
set ylabel 'successful queries per 100 ms'
set grid ytics lc rgb '#dddddd'
set key bottom right box opaque
set xrange [-1000:*]
set yrange [0:*]
set offsets 0, 0, graph 0.12, 0
set xtics 500

c1 = '#1f77b4'
c2 = '#d62728'
set arrow 1 from 0, graph 0 to 0, graph 1 nohead lc rgb '#555555' lw 1.5
set label 1 "restart command" at -15, graph 0.96 right tc rgb '#555555' font ',9'
if (exists("down1")) {
    # Where PQping found the server not accepting connections (the short-backoff run).
    set object 1 rect from down1, graph 0 to accept1, graph 1 fc rgb '#e8e8e8' fs solid noborder behind
}
set arrow 2 from accept1, graph 0 to accept1, graph 1 nohead dt 2 lw 2 lc rgb c1
set label 2 sprintf("server accepts connections again: %.0f ms", accept1) \
    at accept1 + 20, graph 0.42 left tc rgb c1 font ',10'
if (exists("accept2")) {
    set arrow 3 from accept2, graph 0 to accept2, graph 1 nohead dt 3 lw 2 lc rgb c2
    set label 3 sprintf("server accepts connections again: %.0f ms", accept2) \
        at accept2 + 20, graph 0.34 left tc rgb c2 font ',10'
}

# Bucket start t_ms: draw each bucket as a horizontal step over [t, t + 100).
down_key = exists("down1") ? 'server not accepting connections (PQping, blue run)' : ''
if (exists("accept2")) {
    plot datafile index 0 using 1:3 with steps lw 2 lc rgb c1 title title1, \
         datafile index 1 using 1:3 with steps lw 2 dt 1 lc rgb c2 title title2, \
         keyentry with boxes fs solid fc rgb '#e8e8e8' title down_key
} else {
    plot datafile index 0 using 1:3 with steps lw 2 lc rgb c1 title title1, \
         keyentry with boxes fs solid fc rgb '#e8e8e8' title down_key
}
